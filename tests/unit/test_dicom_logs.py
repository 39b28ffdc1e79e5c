"""adapter.dicom.logs: pynetdicom's records keep no dataset value. Found by the diff review."""

from __future__ import annotations

import io
import logging
import warnings

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from adapter.dicom.logs import make_pynetdicom_logs_safe

NAME = "Doe^Jane " + "19470314"


def test_an_exception_pynetdicom_logs_as_its_message_is_logged_by_its_type_only() -> None:
    # pynetdicom logs ``LOGGER.exception(exc)``: the record's message is the exception, whose
    # text pydicom writes with the element's value ("... got exception: ... for data_element:
    # (0010,0010) Patient's Name US: 'Doe^Jane ...'"); only its traceback was left out
    make_pynetdicom_logs_safe()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("pynetdicom")
    logger.addHandler(handler)
    try:
        ds = Dataset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.add(DataElement(0x00100010, "US", NAME))  # a value its VR cannot be written with
        assert encode(ds, False, True) is None  # the SCU's encode of a C-STORE data set
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "pydicom.write_dataset() failed" in text and "OSError" in text  # what failed, and its type
    assert "Doe^Jane" not in text and "19470314" not in text
