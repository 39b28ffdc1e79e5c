"""Load and apply mappings/dicom.yaml: patient identifiers (PatientID + IssuerOfPatientID ↔
FHIR Patient.identifier), photo kind → IOD, and the SOP classes the SCP accepts.

Every problem in the file raises :class:`adapter.errors.PolicyError` naming the element, so a
bad table stops start-up (as adapter.mapping.tables does for the other tables).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from adapter.errors import InvalidInput, PolicyError, RequiredElementMissing, UnknownCode
from adapter.mapping.dicom_sc_kind import CONVERSION_TYPES, SecondaryCaptureKinds
from adapter.mapping.tables import _read_yaml, _validate
from adapter.model.photo import IDENTIFIER_MAX_BYTES, Identifier, PhotoKind, PhotoSource, identifier_too_long
from adapter.text import has_control_character

# PS3.5 9.1: UID components are digits with no leading zero (except "0" itself); ≤ 64 chars.
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
_LO_FORBIDDEN = re.compile(r"[\\\x00-\x1f]")

SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
MF_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
#: The Secondary Capture classes (PS3.4 B.5): single-frame, and multi-frame single bit,
#: grayscale byte and word, true colour. An image of any of them may be a photo of the body.
SC_CLASSES = frozenset({SC_IMAGE, "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                        "1.2.840.10008.5.1.4.1.1.7.3", MF_TRUE_COLOR_SC})
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
_WRITABLE_SOP_CLASSES = frozenset({SC_IMAGE, VL_PHOTOGRAPHIC})

#: Explicit and Implicit VR Little Endian (PS3.5 A.2, A.1; Implicit is the default every SCP takes).
UNCOMPRESSED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: An image's: uncompressed, or JPEG Baseline (Process 1, PS3.5 A.4.1), whose frame is kept as received.
IMAGE_SYNTAXES = (*UNCOMPRESSED_SYNTAXES, JPEGBaseline8Bit)


def accepted_transfer_syntaxes(sop_class: str) -> tuple[str, ...]:
    """The transfer syntaxes an object of ``sop_class`` is accepted in: the presentation contexts
    the C-STORE SCP negotiates (adapter.dicom.scp) and the syntaxes a STOW-RS part may name in
    its File Meta (adapter.services.dicom_objects.stow_instance), one list for both edges. No
    other: Deflated Explicit VR Little Endian (PS3.5 A.5) would be inflated whole by pydicom
    before anything is read (a decompression bomb), and the compressed syntaxes but JPEG
    Baseline have no lossless rendering here. An Encapsulated PDF has no pixel data to
    compress: uncompressed only."""
    return UNCOMPRESSED_SYNTAXES if sop_class == ENCAPSULATED_PDF else IMAGE_SYNTAXES



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


#: The longest an IssuerOfPatientID (LO: 64 characters, each at most 4 bytes in UTF-8) becomes
#: percent-encoded (3 characters a byte), after ``unknownIssuerPrefix``.
_ENCODED_ISSUER_MAX = 64 * 4 * 3


class IssuerEntry(_Strict):
    issuer: str = Field(min_length=1, max_length=64)
    system: str = Field(min_length=1)

    @model_validator(mode="after")
    def _lo(self) -> IssuerEntry:
        if _LO_FORBIDDEN.search(self.issuer):
            raise ValueError("issuer must not contain a backslash or control characters (VR LO)")
        if identifier_too_long(self.system):
            raise ValueError(f"system is longer than an identifier's may be ({IDENTIFIER_MAX_BYTES} bytes in UTF-8)")
        return self


class PatientIdentifierTable(_Strict):
    issuers: list[IssuerEntry] = Field(min_length=1)
    unknown_issuer: Literal["refuse", "prefix"] = Field("refuse", alias="unknownIssuer")
    unknown_issuer_prefix: str = Field("urn:dicom:issuer:", alias="unknownIssuerPrefix", min_length=1)
    missing_issuer: str | None = Field(None, alias="missingIssuer")

    @model_validator(mode="after")
    def _unique(self) -> PatientIdentifierTable:
        issuers = [e.issuer for e in self.issuers]
        systems = [e.system for e in self.issuers]
        if len(set(issuers)) != len(issuers) or len(set(systems)) != len(systems):
            raise ValueError("each issuer and each system may appear only once")
        if self.missing_issuer is not None and self.missing_issuer not in issuers:
            raise ValueError(f"missingIssuer {self.missing_issuer!r} is not one of the issuers")
        if self.unknown_issuer == "prefix" and any(s.startswith(self.unknown_issuer_prefix) for s in systems):
            raise ValueError("a listed system starts with unknownIssuerPrefix: the mapping would be ambiguous")
        if len(self.unknown_issuer_prefix.encode()) > IDENTIFIER_MAX_BYTES - _ENCODED_ISSUER_MAX:
            raise ValueError(f"unknownIssuerPrefix is longer than {IDENTIFIER_MAX_BYTES - _ENCODED_ISSUER_MAX} bytes: "
                             "with an IssuerOfPatientID percent-encoded after it, a system would be longer than an "
                             "identifier's may be")
        return self

    def to_fhir(self, patient_id: str | None, issuer: str | None) -> Identifier:
        """Patient.identifier for a received PatientID + IssuerOfPatientID.

        A PatientID and IssuerOfPatientID of their VR (LO: at most 64 characters) always give an
        identifier within the bound of every identifier the adapter takes
        (adapter.model.photo.IDENTIFIER_MAX_BYTES; the table's systems and prefix are checked
        against it at start). The ingest refuses longer ones before (they could never be sent
        on as a PatientID: adapter.mapping.dicom_value_length); the bound is checked here too,
        for any other caller.

        Raises:
            RequiredElementMissing: no PatientID (expression ``(0010,0020)``).
            UnknownCode: the issuer is missing or unknown and the table says refuse
                (expression ``(0010,0021)``).
            InvalidInput: the PatientID, or the system the issuer gives, is longer than an
                identifier's may be; the PatientID holds a control character.
        """
        value = (patient_id or "").strip()
        if not value:
            raise RequiredElementMissing("the object has no PatientID: it cannot be matched to a patient",
                                         expression="(0010,0020) PatientID")
        if identifier_too_long(value):
            raise InvalidInput(f"the PatientID is longer than an identifier may be ({IDENTIFIER_MAX_BYTES} bytes in "
                               "UTF-8; a PatientID, LO, is at most 64 characters)", expression="(0010,0020) PatientID")
        if has_control_character(value) or "\x7f" in value:
            # an LO holds none, nor DEL (PS3.5 6.2); kept, the FHIR identifier would carry it and
            # no search by the patient's identifier would find the record
            raise InvalidInput("the PatientID holds a control character (an LO holds none): it cannot be matched to "
                               "a patient", expression="(0010,0020) PatientID")
        name = (issuer or "").strip()
        if not name:
            if self.missing_issuer is None:
                raise UnknownCode("the object has no IssuerOfPatientID and mappings/dicom.yaml assumes none",
                                  expression="(0010,0021) IssuerOfPatientID")
            name = self.missing_issuer
        for entry in self.issuers:
            if entry.issuer == name:
                return Identifier(system=entry.system, value=value)
        if self.unknown_issuer == "prefix":
            system = self.unknown_issuer_prefix + quote(name, safe="")
            if identifier_too_long(system):
                raise InvalidInput(f"the IssuerOfPatientID is too long to be an identifier's system ({IDENTIFIER_MAX_BYTES} "
                                   "bytes once percent-encoded; an IssuerOfPatientID, LO, is at most 64 characters)",
                                   expression="(0010,0021) IssuerOfPatientID")
            return Identifier(system=system, value=value)
        # not quoted: the issuer is part of the patient's identifier, and whatever the sender wrote
        raise UnknownCode("the IssuerOfPatientID is not in mappings/dicom.yaml",
                          expression="(0010,0021) IssuerOfPatientID")

    def to_dicom(self, patient: Identifier) -> tuple[str, str]:
        """(PatientID, IssuerOfPatientID) for a FHIR Patient.identifier.

        Raises:
            UnknownCode: the system has no issuer (expression ``subject.identifier.system``).
            InvalidInput: the value cannot be a PatientID (VR LO: ≤ 64 characters, no
                backslash or control characters).
        """
        if len(patient.value) > 64 or _LO_FORBIDDEN.search(patient.value):
            raise InvalidInput("the patient identifier value cannot be a DICOM PatientID "
                               "(at most 64 characters, no backslash or control characters)",
                               expression="subject.identifier.value")
        for entry in self.issuers:
            if entry.system == patient.system:
                return patient.value, entry.issuer
        if self.unknown_issuer == "prefix" and patient.system.startswith(self.unknown_issuer_prefix):
            issuer = unquote(patient.system[len(self.unknown_issuer_prefix):])
            if issuer and len(issuer) <= 64 and not _LO_FORBIDDEN.search(issuer):
                return patient.value, issuer
        raise UnknownCode("the patient identifier system has no IssuerOfPatientID in mappings/dicom.yaml",
                          expression="subject.identifier.system")


class KindIod(_Strict):
    sop_class: str = Field(alias="sopClass", pattern=UID_PATTERN)
    modality: str = Field(pattern=r"^[A-Z0-9]{1,16}$")
    conversion_type: str | None = Field(None, alias="conversionType")
    burned_in_annotation: Literal["YES", "NO"] = Field(alias="burnedInAnnotation")
    series_number: int = Field(1, alias="seriesNumber", ge=1, le=2**31 - 1)
    #: What a photo of this kind without a body site images: ``unknown`` (any body part, maybe a
    #: paired one: series Laterality empty, PS3.3 C.7.3.1) or ``unpaired`` (no body part that has
    #: sides, a sheet of paper: ImageLaterality U and no Laterality). adapter.mapping.dicom_photo.
    without_body_site: Literal["unknown", "unpaired"] = Field("unknown", alias="withoutBodySite")
    #: SeriesDescription (LO) of the kind's objects: a fixed text that tells a PACS list what the
    #: series is (the secondary image's warning, in short; mappings/kinds.yaml has it in full).
    #: Each photo's object is a series of its own, so the kind's text describes the whole series.
    series_description: str | None = Field(None, alias="seriesDescription", min_length=1, max_length=64)

    @model_validator(mode="after")
    def _iod(self) -> KindIod:
        if self.series_description is not None and _LO_FORBIDDEN.search(self.series_description):
            raise ValueError("seriesDescription must not contain a backslash or control characters (VR LO)")
        if self.sop_class not in _WRITABLE_SOP_CLASSES:
            raise ValueError(f"the adapter writes only SC ({SC_IMAGE}) and VL Photographic ({VL_PHOTOGRAPHIC})")
        if self.sop_class == SC_IMAGE and self.conversion_type not in CONVERSION_TYPES:
            raise ValueError(f"Secondary Capture needs conversionType, one of {sorted(CONVERSION_TYPES)}")
        if self.sop_class == VL_PHOTOGRAPHIC and self.conversion_type is not None:
            raise ValueError("conversionType belongs to Secondary Capture only")
        return self

    @property
    def is_secondary_capture(self) -> bool:
        return self.sop_class == SC_IMAGE


class ReceiveClass(_Strict):
    """A SOP class the SCP accepts, and the kind of its objects: ``kind`` for every object of the
    class, or ``kindBy: secondaryCapture``, the object's own ConversionType, Modality and body
    part through ``receive.secondaryCapture`` (adapter.mapping.dicom_sc_kind). Never a fixed
    ``secondary`` (only an object can say it is a picture of an image), nor a fixed ``document``
    for a Secondary Capture class (its images may be photos of the body): both failed open."""

    name: str
    kind: PhotoKind | None = None
    kind_by: Literal["secondaryCapture"] | None = Field(None, alias="kindBy")

    @model_validator(mode="before")
    @classmethod
    def _not_the_old_rule(cls, data: Any) -> Any:
        """A dicom.yaml from before the fail-closed rule (``kind: secondary`` with
        ``byConversionType``/``byModality``) is told what replaces it, not only that the keys are
        unknown (review of the day's merges: an organisation's edited copy stopped the adapter with
        a "did you mean" that pointed the wrong way)."""
        if isinstance(data, dict) and ({"byConversionType", "byModality"} & data.keys()):
            raise ValueError("byConversionType and byModality are replaced by the fail-closed rule for Secondary "
                             "Captures: write `kindBy: secondaryCapture` for this class (no kind, no byConversionType, "
                             "no byModality) and copy the `receive.secondaryCapture` block of the shipped "
                             "mappings/dicom.yaml (README, DICOM: how a received object's kind is decided)")
        return data

    @model_validator(mode="after")
    def _one_way(self) -> ReceiveClass:
        if (self.kind is None) == (self.kind_by is None):
            raise ValueError("give either kind or kindBy: secondaryCapture")
        if self.kind is PhotoKind.SECONDARY:
            raise ValueError("kind secondary for a whole class fails open: only the object can say it is a picture "
                             "of an image (kindBy: secondaryCapture)")
        return self


class ReceiveTable(_Strict):
    source: PhotoSource = PhotoSource.COLLEAGUE_INTERNAL
    sop_classes: dict[str, ReceiveClass] = Field(alias="sopClasses", min_length=1)
    secondary_capture: SecondaryCaptureKinds | None = Field(None, alias="secondaryCapture")

    @model_validator(mode="after")
    def _uids(self) -> ReceiveTable:
        bad = [uid for uid in self.sop_classes if not re.match(UID_PATTERN, uid) or len(uid) > 64]
        if bad:
            raise ValueError(f"not valid UIDs: {bad}")
        documents = [uid for uid, entry in self.sop_classes.items()
                     if uid in SC_CLASSES and entry.kind is PhotoKind.DOCUMENT]
        if documents:
            raise ValueError(f"Secondary Capture classes {documents} may hold photos of the body: not kind document "
                             "for the whole class (kindBy: secondaryCapture)")
        if self.secondary_capture is None and any(e.kind_by for e in self.sop_classes.values()):
            raise ValueError("kindBy: secondaryCapture needs receive.secondaryCapture")
        return self

    def kind_of(self, sop_class: str, *, conversion_types: Sequence[str], modalities: Sequence[str],
                names_body_part: bool) -> PhotoKind:
        """The kind of a received object of ``sop_class`` (one listed): the class's, or the SC
        rule's (:meth:`adapter.mapping.dicom_sc_kind.SecondaryCaptureKinds.kind_of`, which raises
        RequiredElementMissing for an object without ConversionType or Modality)."""
        entry = self.sop_classes[sop_class]
        if entry.kind is not None:
            return entry.kind
        assert self.secondary_capture is not None  # checked at load
        return self.secondary_capture.kind_of(conversion_types=conversion_types, modalities=modalities,
                                              names_body_part=names_body_part)


class _DicomFile(_Strict):
    version: int = Field(1, ge=1)
    patient_identifiers: PatientIdentifierTable = Field(alias="patientIdentifiers")
    kinds: dict[PhotoKind, KindIod]
    receive: ReceiveTable
    modalities: dict[str, str] = {}

    @model_validator(mode="after")
    def _all_kinds(self) -> _DicomFile:
        if set(self.kinds) != set(PhotoKind):
            raise ValueError(f"kinds must map exactly {[k.value for k in PhotoKind]}")
        return self


@dataclass(frozen=True)
class DicomTables:
    """mappings/dicom.yaml, validated; loaded once at start-up and passed down."""

    patient_identifiers: PatientIdentifierTable
    kinds: dict[PhotoKind, KindIod]
    receive: ReceiveTable
    modalities: dict[str, str]


def load_dicom_tables(path: Path) -> DicomTables:
    """Read and validate mappings/dicom.yaml.

    Raises:
        PolicyError: the file is missing, not YAML, or does not validate.
    """
    data: _DicomFile = _validate(_DicomFile, _read_yaml(path), path)
    if not isinstance(data, _DicomFile):  # pragma: no cover - _validate returns the model
        raise PolicyError(f"{path}: not a DICOM table")
    return DicomTables(patient_identifiers=data.patient_identifiers, kinds=dict(data.kinds),
                       receive=data.receive, modalities=dict(data.modalities))


__all__ = [
    "CONVERSION_TYPES", "ENCAPSULATED_PDF", "IMAGE_SYNTAXES", "MF_TRUE_COLOR_SC", "SC_CLASSES", "SC_IMAGE",
    "UNCOMPRESSED_SYNTAXES", "VL_PHOTOGRAPHIC",
    "DicomTables",
    "IssuerEntry", "KindIod", "PatientIdentifierTable", "ReceiveClass", "ReceiveTable", "accepted_transfer_syntaxes",
    "load_dicom_tables",
]
