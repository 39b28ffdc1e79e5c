"""A released DICOM object in the transfer syntax a DICOMweb client asked for (PS3.18 8.7.3.4,
8.7.8.2, 9.4.2.4): as stored, or in Explicit VR Little Endian, the default of DICOM web services,
which every origin server must be able to send (adapter.mapping.dicom_decompress).

Only the released object is transcoded: the one the purpose's decision released and its view
made (adapter.services.access), never the stored object, so what leaves is what that decision
permitted, its pixels decoded. Nothing here decides or audits.
"""

from __future__ import annotations

import dataclasses

from adapter.mapping.dicom_decompress import TO_EXPLICIT, to_explicit_vr_little_endian
from adapter.mapping.dicom_json import read_released
from adapter.mapping.dicom_photo import encode_dataset
from adapter.services.access import DicomContent

#: Explicit VR Little Endian: the default transfer syntax of DICOMweb (PS3.18 8.7.3.4).
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def can_be_explicit(stored: str) -> bool:
    """Whether an object stored in ``stored`` can be sent in Explicit VR Little Endian."""
    return stored in TO_EXPLICIT


def in_explicit_vr_little_endian(content: DicomContent) -> DicomContent:
    """``content`` in Explicit VR Little Endian (itself when it is in it already): see
    adapter.mapping.dicom_decompress.to_explicit_vr_little_endian for what changes and what is
    refused (UnsupportedPixelData, UndecodableImage, ImageTooLarge)."""
    if content.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return content
    ds = to_explicit_vr_little_endian(read_released(content.data))
    data = encode_dataset(ds)
    del ds
    return dataclasses.replace(content, data=data, transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
