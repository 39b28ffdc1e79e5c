"""The organisation's policy (mappings/policy.yaml), validated strictly: an invalid policy
stops start-up with a message naming the element."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from adapter.model.photo import Identifier, PhotoKind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Organisation(_Strict):
    name: str = Field(min_length=1)
    identifier: Identifier


class ConsentRules(_Strict):
    written_required: bool = Field(False, alias="writtenRequired",
                                   description="verbal consent is refused for clinical photos")
    written_required_for_explicit: bool = Field(
        False, alias="writtenRequiredForExplicitPurposes",
        description="a Consent permitting an explicit purpose (education, research...) counts only when written")
    allow_pending: bool = Field(False, alias="allowPending",
                                description="accept clinical photos without consent, flagged, break-glass only")
    explicit_purposes: list[str] = Field(alias="explicitPurposes", min_length=1,
                                         description="purposes that need an active Consent permitting them")
    care_purposes: list[str] = Field(alias="carePurposes", min_length=1)
    care_after_withdrawal: bool = Field(False, alias="careAfterWithdrawal",
                                        description="clinical photos stay readable for care after the "
                                        "patient's consent is withdrawn")
    patient_implied_purposes: list[str] = Field(["TREAT"], alias="patientImpliedPurposes")


class BreakGlass(_Strict):
    enabled: bool = False
    purposes: list[str] = Field(["ETREAT", "BTG", "ERTREAT"])


class Devices(_Strict):
    personal_allowed: bool = Field(True, alias="personalAllowed")


class Quality(_Strict):
    min_width: int = Field(640, alias="minWidth", ge=1)
    min_height: int = Field(480, alias="minHeight", ge=1)
    min_sharpness: float = Field(2.0, alias="minSharpness", ge=0,
                                 description="mean edge strength of a reduced-scale decode; below = blurred")
    min_jpeg_quality: int = Field(40, alias="minJpegQuality", ge=1, le=100,
                                  description="estimated JPEG quality below which the photo is degraded")
    decode_proof: Literal["full", "prefix"] = Field(
        "prefix", alias="decodeProof",
        description="how much of a JPEG's entropy-coded data the decode proof decodes: full = all of it; "
        "prefix = every header plus the first 16 KB of scan data (same refusals, a fraction of the cost; "
        "sharpness is the same number as under full, or not measured for a large sequential JPEG with many "
        "bytes per pixel)")


class Limits(_Strict):
    max_pixels: int = Field(80_000_000, alias="maxPixels", gt=0, description="decompression-bomb limit")


class MetadataRules(_Strict):
    keep_capture_time: bool = Field(True, alias="keepCaptureTime")
    keep_device_model: bool = Field(True, alias="keepDeviceModel")


class Labels(_Strict):
    confidentiality: str = Field("R", pattern="^(U|L|M|N|R|V)$")


class Pseudonyms(_Strict):
    system: str = Field("urn:clinical-image-adapter:pseudonym")


class Policy(_Strict):
    version: int = Field(1, ge=1)
    uri: str = Field(min_length=1, description="our own policy document URI (Consent.policy.uri)")
    organisation: Organisation
    consent: ConsentRules
    break_glass: BreakGlass = Field(BreakGlass(), alias="breakGlass")
    devices: Devices = Devices()
    quality: Quality = Quality()
    limits: Limits = Limits()
    metadata: MetadataRules = MetadataRules()
    labels: Labels = Labels()
    pseudonyms: Pseudonyms = Pseudonyms()
    forward_kinds: list[PhotoKind] = Field(list(PhotoKind), alias="forwardKinds",
                                           description="kinds forwarded to PACS when a destination is set")
    allowed_ae_titles: list[str] = Field([], alias="allowedAETitles")
