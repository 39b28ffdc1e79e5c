"""The photo kind of a received Secondary Capture object: mappings/dicom.yaml
``receive.secondaryCapture``, validated at start, applied by :meth:`SecondaryCaptureKinds.kind_of`.

Why a rule, and why this one. The kind decides consent: a ``document`` or ``secondary`` photo
needs no consent for care and stays readable after the patient withdraws a Consent; a
``clinical`` photo is read for care from a PACS only until such a withdrawal (adapter.consent.
decision, step 6), and ``secondary`` carries the warning "review the original on its platform".
A Secondary Capture (SC) object can hold anything: a camera photo of the skin exported from a
workstation, an endoscopy video frame, a scanned form, a screen capture of an x-ray. The rule
used to file every SC as ``secondary`` unless it said SD or DOC (clinical-safety review
dicomsafety F1); it now fails closed, ``clinical`` unless the object itself says otherwise.

What the object says (DICOM PS3.3):

* **Modality** (0008,0060). An SC object has one Modality element, defined by the General
  Series Module (Type 1) and by the SC Equipment Module (C.8.6.1), whose definition "shall
  override the definition in the General Series Module": the type of device that originally
  acquired the data (the source equipment), not the capture device. So an SC's Modality says
  what the image was taken with: XC External-camera Photography, ES Endoscopy, OP Ophthalmic
  Photography, GM/SM General/Slide Microscopy, DMS Dermoscopy (visible-light photographs of the
  body, or of tissue from it: C.7.3.1.1.1 Defined Terms), or DX, CT, US, ECG… (imaging and
  waveform equipment whose images and traces are shown on a platform of their own). OT (Other)
  says nothing of what was imaged.
* **Conversion Type** (0008,0064), Type 1 (C.8.6.1): how the image was brought into DICOM. DF
  Digitized Film and SI Scanned Image say the object is a picture of an image (a film, a printout,
  a trace on paper); SD Scanned Document a picture of a document. DV Digitized Video, DI Digital
  Interface and WSD Workstation name only the capture path (Note 1 of C.8.6.1: the equipment
  generating the video signal, on the sending side of the interface, or the workstation): a camera
  behind a frame grabber or a USB link gives DV or DI, a photo-management workstation WSD. They say
  an image was captured from an imaging device only together with a Modality that names one. DRW
  Drawing and SYN Synthetic Image say neither.
* **A body part**: AnatomicRegionSequence (0008,2218), PrimaryAnatomicStructureSequence
  (0008,2228) or BodyPartExamined (0018,0015). A document has no body site (POST /photos refuses a
  document with one), so an object naming one is not a document.

The rule, first match wins:

1. ConversionType or Modality absent or empty: refused (RequiredElementMissing, DIMSE 0xA900 with
   Offending Element, STOW-RS FailureReason 0xA900), as README promises of a required (Type 1)
   attribute missing: these are the attributes that decide the kind.
2. Either with more than one value (VM 1): ``clinical``, nothing can be told from it.
3. Modality in ``bodyPhotoModalities``: ``clinical``, whatever the ConversionType (an SD from a
   camera is a photo, its body site kept).
4. ConversionType in ``documentConversionTypes`` or Modality in ``documentModalities``:
   ``document``; but ``clinical`` when the object names a body part (it contradicts itself).
5. ConversionType in ``imageConversionTypes`` (SI, DF): ``secondary``.
6. ConversionType in ``captureConversionTypes`` (DV, DI, WSD) and Modality in
   ``imageModalities``: ``secondary``.
7. Anything else (OT with WSD, DRW, SYN, a value not a defined term): ``clinical``.

Checked at start (a table that would fail open stops the adapter, naming the element): the
visible-light modalities of C.7.3.1.1.1 are all body-photo modalities; no modality is in two
lists, and OT (which says nothing) is in none that makes an object less protected; every
ConversionType is a defined term and in at most one list.

The kind is decided once, at ingest, and stored with the record (its access facts); a record
stored under an earlier rule keeps the kind it was filed with (a read never recomputes it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adapter.errors import RequiredElementMissing
from adapter.model.photo import PhotoKind

#: Conversion Type (0008,0064) defined terms (PS3.3 C.8.6.1, standards.md §4.2).
CONVERSION_TYPES = frozenset({"DV", "DI", "DF", "WSD", "SD", "SI", "DRW", "SYN"})
#: The visible-light photography Modality defined terms (PS3.3 C.7.3.1.1.1): each must be listed
#: as a body photo; a table may list more (LS, OSS surface scans; the retired VL).
VISIBLE_LIGHT_MODALITIES = frozenset({"XC", "ES", "OP", "GM", "SM", "DMS"})
#: Modality OT (Other) says nothing of what was imaged: never a reason for a less protected kind.
OTHER = "OT"
_CS = r"^[A-Z0-9_]{1,16}$"
MODALITY_TAG = "(0008,0060) Modality"
CONVERSION_TYPE_TAG = "(0008,0064) ConversionType"


class SecondaryCaptureKinds(BaseModel):
    """``receive.secondaryCapture`` of mappings/dicom.yaml (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    body_photo_modalities: frozenset[str] = Field(alias="bodyPhotoModalities")
    document_conversion_types: frozenset[str] = Field(frozenset(), alias="documentConversionTypes")
    document_modalities: frozenset[str] = Field(frozenset(), alias="documentModalities")
    image_conversion_types: frozenset[str] = Field(frozenset(), alias="imageConversionTypes")
    capture_conversion_types: frozenset[str] = Field(frozenset(), alias="captureConversionTypes")
    image_modalities: frozenset[str] = Field(frozenset(), alias="imageModalities")

    @field_validator("body_photo_modalities", "document_modalities", "image_modalities")
    @classmethod
    def _modalities(cls, value: frozenset[str]) -> frozenset[str]:
        bad = sorted(m for m in value if not re.match(_CS, m))
        if bad:
            raise ValueError(f"not Modality codes (CS: capitals, digits, underscore, ≤ 16): {bad}")
        return value

    @field_validator("document_conversion_types", "image_conversion_types", "capture_conversion_types")
    @classmethod
    def _conversion_types(cls, value: frozenset[str]) -> frozenset[str]:
        bad = sorted(value - CONVERSION_TYPES)
        if bad:
            raise ValueError(f"not ConversionType defined terms {sorted(CONVERSION_TYPES)}: {bad}")
        return value

    @model_validator(mode="after")
    def _fails_closed(self) -> SecondaryCaptureKinds:
        missing = sorted(VISIBLE_LIGHT_MODALITIES - self.body_photo_modalities)
        if missing:
            raise ValueError(f"bodyPhotoModalities must list every visible-light modality of PS3.3 C.7.3.1.1.1; "
                             f"missing {missing}")
        for name, listed in (("documentModalities", self.document_modalities),
                             ("imageModalities", self.image_modalities)):
            photos = sorted(listed & self.body_photo_modalities)
            if photos:
                raise ValueError(f"{name} lists body-photo modalities {photos}: a photo of the body is clinical")
            if OTHER in listed:
                raise ValueError(f"{name} lists OT (Other), which says nothing of what was imaged")
        both = sorted(self.document_modalities & self.image_modalities)
        if both:
            raise ValueError(f"modalities both document and image: {both}")
        lists = (("documentConversionTypes", self.document_conversion_types),
                 ("imageConversionTypes", self.image_conversion_types),
                 ("captureConversionTypes", self.capture_conversion_types))
        for i, (name, listed) in enumerate(lists):
            for other, others in lists[i + 1:]:
                if listed & others:
                    raise ValueError(f"{name} and {other} both list {sorted(listed & others)}")
        return self

    def kind_of(self, *, conversion_types: Sequence[str], modalities: Sequence[str],
                names_body_part: bool) -> PhotoKind:
        """The kind of an SC object (module docstring: the rule, first match wins).

        ``conversion_types`` and ``modalities`` are the element's values (none when it is absent
        or empty); ``names_body_part`` whether the object names a body part.

        Raises:
            RequiredElementMissing: ConversionType or Modality has no value (expression: each
                that has none).
        """
        missing = [tag for tag, values in ((MODALITY_TAG, modalities), (CONVERSION_TYPE_TAG, conversion_types))
                   if not values]
        if missing:
            # the Error Comment keeps 64 characters: what is missing first
            raise RequiredElementMissing("Secondary Capture without " + " or ".join(
                t.split(" ", 1)[1] for t in missing) + " (Type 1), which decides its photo kind", expression=missing)
        if len(conversion_types) > 1 or len(modalities) > 1:
            return PhotoKind.CLINICAL
        conversion, modality = conversion_types[0], modalities[0]
        if modality in self.body_photo_modalities:
            return PhotoKind.CLINICAL
        if conversion in self.document_conversion_types or modality in self.document_modalities:
            return PhotoKind.CLINICAL if names_body_part else PhotoKind.DOCUMENT
        if conversion in self.image_conversion_types:
            return PhotoKind.SECONDARY
        if conversion in self.capture_conversion_types and modality in self.image_modalities:
            return PhotoKind.SECONDARY
        return PhotoKind.CLINICAL


__all__ = ["CONVERSION_TYPES", "VISIBLE_LIGHT_MODALITIES", "SecondaryCaptureKinds"]
