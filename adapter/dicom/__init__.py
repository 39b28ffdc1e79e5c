"""The DICOM edge: the only package that imports pynetdicom (STYLE §1).

``scp``: the C-STORE/C-ECHO SCP and its AE (options in ``ae``), ``handlers``: its event
handlers, ``status``: the one table from the error hierarchy to DIMSE statuses, ``scu``: the
C-STORE SCU of the forwarder.
"""

from adapter.dicom.ae import AeOptions
from adapter.dicom.scp import StoreSCP
from adapter.dicom.status import DIMSE_STATUS, dimse_status_for

__all__ = ["DIMSE_STATUS", "AeOptions", "StoreSCP", "dimse_status_for"]
