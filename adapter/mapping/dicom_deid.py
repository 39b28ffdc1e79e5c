"""De-identified (TRAIN) and pseudonymised (HRESCH) copies of a DICOM dataset, following the
PS3.15 Annex E Basic Application Level Confidentiality Profile (Table E.1-1) and its options.

Both functions return a new dataset and never change their input.

What is done (the attribute lists are below; actions as in Table E.1-1):

The lists below follow a full reading of Table E.1-1 (every attribute whose Basic Profile action
is X, Z or D is acted on, by name or by its VR's rule).

* **Z** (emptied, kept because the IODs need them as Type 2): PatientName, PatientID,
  PatientBirthDate, PatientSex, ReferringPhysicianName, AccessionNumber, StudyID, the Z
  attributes of the specimen, trial and device modules, and, unless
  dates are retained, StudyDate/Time and ContentDate (ContentTime is removed: it is Type 1C in
  VL Image, so present means non-empty). AcquisitionContextSequence (Type 2
  in VL Photographic) is emptied rather than removed.
* **X** (removed): every attribute of :data:`BASIC_PROFILE_REMOVE` (other patient IDs/names,
  issuer of patient ID, patient demographics, physicians, operators, institution and
  department, station, device serials and IDs, software versions, request/order/visit
  attributes, descriptions, comments, DerivationDescription, content creator, SR participants,
  clinical trial identifiers, digital signatures, original/modified attribute sequences, every
  GPS attribute of the photography module and the camera's MakerNote…);
  every other **PN** element (a name is identifying wherever it appears); every **LT/ST/UT**
  element (free text); every **UR** and **UC** element but the code values and coding scheme
  URLs of concepts (a RetrieveURL holds the PACS's host and the original Study UID); overlays (60xx) and curves (50xx); all **private** elements; every
  public element the data dictionary does not know (a newer standard's attribute, read as UN:
  what it holds cannot be judged) and group lengths; the file
  meta's AE titles. Unless dates are retained, every other DA/TM/DT element and
  TimezoneOffsetFromUTC (kept with the dates: it gives them their zone, if it is an offset).
  Beyond the table, every other **LO, SH, UC and AE** value (by the tag's own VR), at any depth,
  but a code's (CodeValue, CodingSchemeDesignator, CodingSchemeVersion, LongCodeValue): the
  descriptions, comments, labels and names a sender writes in its own words, which Table E.1-1
  lists only in part (ViewName, ContentDescription, a LUT's explanation, a protocol's name…;
  PS3.15 E.3.5 keeps a descriptor only once cleaned, and no rule tells a clean one from a name);
  and BodyPartExamined, a CS whose Defined Terms any upper-case words fit (privacy review F2).
* **Coded strings the sender fills** (adapter.mapping.dicom_defined_terms, at any depth): ImageType
  keeps values 1-2 of their Enumerated Values (values 3 on, implementation-defined words, go),
  ContentLabel becomes the adapter's own (``DEIDENTIFIED``), ViewPosition stays only as one of its
  Defined Terms and PatientOrientation only of its grammar (else removed, emptied: Type 2C)
  (review of the merges F4).
* **Code meanings** (PS3.3 8.8): every CodeMeaning, at any depth, is written anew from the
  code it names: the adapter's tables (``code_meanings``: mappings/body_sites.yaml), else the
  PS3.16 codes pydicom carries, else the code value itself
  (adapter.mapping.dicom_code_meanings); never the sender's words ("Forearm of Jane Doe").
  The code stays: it is what the image shows, as the FHIR views keep codes without displays.
* **D** (a dummy value): the labels and identifiers Table E.1-1 marks D (Type 1 where they
  occur: ContainerIdentifier, SpecimenIdentifier, DeviceLabel…) become ``DEIDENTIFIED``.
* **U** (replaced consistently): every UI value that is not a well-known DICOM UID (SOP
  classes, transfer syntaxes, coding schemes stay) — Study, Series, SOP Instance, Frame of
  Reference, referenced instances, InstanceCreatorUID… — through
  :func:`adapter.mapping.dicom_uids.keyed_uid`: HMAC-SHA256 under the caller's key, so one input
  UID always gives one output UID (study/series structure and references survive across
  objects) and nobody without the key can recompute it. TRAIN and HRESCH use different
  contexts, so their copies cannot be linked to each other by UID.
* **Pixel data**: the pixels are never changed and never cleaned. Encapsulated JPEG frames lose
  every APPn segment but JFIF and Adobe (the ICC profile too, and the dataset's ICCProfile) and
  every COM (lossless segment surgery; e.g. EXIF/GPS that ``img2dcm -ka`` copies into frames),
  and each is written in its view's own way (fill bytes before its first scan:
  adapter.imaging.unlinkable), so that no frame is the stored frame byte for byte, nor the other
  view's copy of it;
  native pixel data is cut to its frames' length.
* An element under a VR its tag does not allow (adapter.mapping.dicom_vr) stops the copy
  (NonConformingVR): the rules go by VR, so a StudyInstanceUID sent as LO would otherwise keep
  its value. The ingest refuses such objects; this guards any stored before it did. Tolerated
  are the mismatches no rule tells apart (``vr_tolerated``: a CS or SH sent as LO, a US as SS):
  such an element is cleaned as under its own VR, and one given a new value (emptied, a dummy,
  the pseudonym) is written under its dictionary VR.
* Then PatientIdentityRemoved (YES only when nothing identifying may be left in the pixels or
  the document: below), DeidentificationMethod (text), DeidentificationMethodCodeSequence (CID
  7050), LongitudinalTemporalInformationModified. The method says what was done: the profile
  and options in codes and words; the Clean Descriptors Option (113105) when the copy keeps the
  adapter's own ImageComments or SeriesDescription (below: Table E.1-1 removes them, so only
  that option lets a cleaned one stay); :data:`REPLACED_CODE_MEANINGS` when a code meaning the
  object carried was not the one written.

Decisions:

* **Burned-in annotation and encapsulated documents are released, not refused** (Table E.1-1
  would replace an EncapsulatedDocument with a dummy: a copy that keeps it does not claim the
  Basic Profile in DeidentificationMethodCodeSequence, only in words beside the note below). Release for
  TRAIN/HRESCH rests on the patient's explicit consent for that purpose (checked before this is
  called; de-identification never substitutes for consent), exactly as the FHIR de-identified
  view releases the same pixels. What is done to the attributes cannot reach text burned into
  the pixels, nor the content of an Encapsulated Document (PDF), so nothing claims it did:
  BurnedInAnnotation is kept as it is (YES for documents and screens), Clean Pixel Data
  (113101) is never put in DeidentificationMethodCodeSequence, and DeidentificationMethod says
  in words that the pixel data (or the document) was not cleaned whenever BurnedInAnnotation is
  not NO (absent counts as "may be present") or the record's kind is text by nature (kinds.yaml
  ``textInPixels``: a document, a screen), or the object is an Encapsulated Document. Such a copy
  says PatientIdentityRemoved NO (PS3.3 C.7.1.1: YES means the identity was removed "from the
  Attributes and the Pixel Data"), as the FHIR views label its record REDACTED, not ANONYED or
  PSEUDED (adapter.mapping.views; clinical-safety review F3).
  Type 2 attributes of the Encapsulated Document module that the rules remove (DocumentTitle,
  and ContentTime/AcquisitionDateTime when dates are removed) are kept empty instead, so the
  copy stays a valid Encapsulated PDF.
* **The encapsulated PDF loses its metadata** (adapter.imaging.pdf.pdf_without_metadata: the
  document information dictionary with its Author, Title and dates, the XMP packet, embedded
  files, annotation authors…), as the FHIR views' copy of it does: it is not content, and an
  object that says PatientIdentityRemoved YES must not carry the MRN in its PDF's Title.
  EncapsulatedDocumentLength becomes the cleaned PDF's length, padded to even with a NUL
  (PS3.5 7.1.1, PS3.3 C.24.2), and DeidentificationMethod says both what was done and what not
  (:data:`NOT_CLEANED_DOCUMENT`). A document that cannot be cleaned (not a PDF, encrypted, not
  readable) stops the copy (UncleanableDocument): never released with its metadata.
* **The secondary image's warning is kept.** Table E.1-1 removes ImageComments and
  SeriesDescription (X: free text). The adapter writes a fixed text of its own into both for
  a photo of an x-ray, ECG or screen (adapter.mapping.dicom_photo: "Secondary image: …
  Review the original on its platform before diagnosis."). It holds no patient data, and a
  training or research reader needs it as much as a clinician does, so the caller passes those
  texts (``fixed_texts``: mappings/kinds.yaml ``warning``, mappings/dicom.yaml
  ``seriesDescription``) and a value equal to one of them word for word is written back after
  cleaning (:data:`FIXED_TEXT_ATTRIBUTES`, top level only); so is a value of several lines
  (CR LF) each of which is one of them: the adapter's ImageComments of a photo is the kind's
  warning and then the record's quality warnings ("Quality warning: image looks blurred …",
  adapter.mapping.dicom_photo.image_comments: numbers about the image and the policy's limits,
  no patient data), which the caller adds to ``fixed_texts`` for the record's own object. Any
  other value (a sender's comment, a PACS's description, a line of either) is removed as before. The FHIR views keep the photo-kind
  extension likewise, and of the notes (the sender's note may identify) the warning alone.
* **RecognizableVisualFeatures** is kept as it is (YES for clinical photos), but written YES
  when the record's kind is recognizable (kinds.yaml) whatever the sender said (a received
  object's NO would contradict the rest of the copy: research review finding 4): the Clean
  Recognizable Visual Features option (113102) is not claimed; releasing a recognisable photo
  for TRAIN/HRESCH rests on the patient's explicit consent, checked before this is called. When
  it is not NO (absent counts as "may") or the record's kind is recognizable, the
  DeidentificationMethod says the person may be recognised (:data:`NOT_CLEANED_FEATURES`) and
  PatientIdentityRemoved is NO, as above.
* **TRAIN** (:func:`deidentify`): Basic Profile only (113100); dates removed
  (LongitudinalTemporalInformationModified REMOVED), like the FHIR de-identified view, which
  keeps only the year (a DICOM DA cannot hold only a year).
* **HRESCH** (:func:`pseudonymise`): Basic Profile + Retain Longitudinal Temporal Information
  Full Dates (113100, 113106), like the FHIR pseudonymised view, which keeps dates;
  PatientID = the keyed pseudonym the FHIR view uses, IssuerOfPatientID = the pseudonym
  system, PatientName = ``<pseudonym>^`` (so a PACS shows something that is not a name);
  InstanceCreationTime and TimeOfSecondaryCapture removed (:data:`CREATION_TIMES`), their
  dates kept, as the FHIR view cuts the adapter's instants to the day; a posted photo's
  StudyTime, which may be the instant it was filed, emptied (:data:`FILED_TIMES`), its StudyDate kept.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Mapping

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from adapter.errors import InvalidInput, UncleanableDocument, UndecodableImage
from adapter.imaging.frame import encapsulated_jpeg
from adapter.imaging.pdf import pdf_without_metadata
from adapter.imaging.sniff import JPEG
from adapter.imaging.unlinkable import DEIDENTIFIED_COPY, PSEUDONYMISED_COPY, unlinkable_copy
from adapter.mapping.dicom_code_meanings import code_meaning
from adapter.mapping.dicom_defined_terms import CHECKED as DEFINED_TERMS_CHECKED
from adapter.mapping.dicom_defined_terms import keep_defined_terms
from adapter.mapping.dicom_fhir import extract_image
from adapter.mapping.dicom_uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    check_uid_root,
    keyed_uid,
)
from adapter.mapping.dicom_vr import NonConformingVR, allowed_vrs, dictionary_vr, vr_tolerated
from adapter.mapping.release_contexts import HRESCH_CONTEXT, TRAIN_CONTEXT

#: Table E.1-1 attributes emptied (Type 2 in the IODs we write or commonly receive).
BASIC_PROFILE_ZERO = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
    "AccessionNumber", "StudyID", "AcquisitionContextSequence",
    "ClinicalTrialProtocolName", "ContrastBolusAgent", "DeviceAlternateIdentifier",
    "IssuerOfTheContainerIdentifierSequence", "IssuerOfTheSpecimenIdentifierSequence", "PrescriptionNotesSequence",
    "RTAccessoryDeviceSlotID", "RTAccessoryHolderSlotID", "SpecimenPreparationSequence",
    "VerifyingObserverIdentificationCodeSequence", "ROIName", "SourceOfPreviousValues",
    # an animal's registration numbers (Type 1 in its items; the sequence is Type 2C)
    "BreedRegistrationSequence",
    # free text from a photo's EXIF Make or the sender (see ManufacturerModelName)
    "Manufacturer",
})
#: Removed from the pseudonymised copy though it retains dates (Type 3): the time an object was
#: made (the adapter's: when it stored the photo), which whoever knows when a photo was uploaded
#: would find the patient's pseudonym by (research review finding 3); the dates stay.
CREATION_TIMES = ("InstanceCreationTime", "TimeOfSecondaryCapture")
#: The times of a posted photo's object (adapter.mapping.dicom_photo) the HRESCH copy empties: its
#: StudyTime is its study's first photo's time taken or, none known, the instant the adapter filed
#: it, to the millisecond (merges review finding 4), which the object cannot tell apart (Type 2:
#: emptied, not removed). Each photo's time taken stays: its ContentTime and AcquisitionDateTime
#: (the first photo's is the StudyTime a taken time gave). A received object's are its sender's.
FILED_TIMES = ("StudyTime",)
#: Dates emptied (Type 2 / 2C) unless dates are retained (113106).
DATES_ZERO = frozenset({"StudyDate", "StudyTime", "ContentDate"})
#: Table E.1-1 attributes removed (the ones the adapter's objects, typical VL/SC objects from a
#: PACS, and their sequences can carry). Generic rules add PN, LT/ST/UT, dates, private tags.
BASIC_PROFILE_REMOVE = frozenset({
    # patient
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
    "PatientBirthTime", "PatientAge", "PatientSize", "PatientWeight", "PatientAddress",
    "PatientMotherBirthName", "MilitaryRank", "BranchOfService", "MedicalRecordLocator",
    "MedicalAlerts", "Allergies", "CountryOfResidence", "RegionOfResidence", "PatientTelephoneNumbers",
    "PatientTelecomInformation", "EthnicGroup", "Occupation", "SmokingStatus",
    "AdditionalPatientHistory", "PregnancyStatus", "LastMenstrualDate", "PatientReligiousPreference",
    "PatientComments", "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization",
    "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "PatientInsurancePlanCodeSequence",
    "PatientPrimaryLanguageCodeSequence", "PatientState", "PatientInstitutionResidence",
    "CurrentPatientLocation", "ReferencedPatientSequence", "ReferencedPatientPhotoSequence",
    "PersonTelephoneNumbers", "PersonAddress", "PatientSexNeutered",
    # study, visit, request, procedure
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "RequestingPhysician", "RequestingService",
    "ReferencedStudySequence", "StudyDescription", "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence", "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID",
    "ServiceEpisodeDescription", "IssuerOfServiceEpisodeIDSequence", "VisitComments",
    "DischargeDiagnosisDescription", "RequestAttributesSequence", "RequestedProcedureID",
    "RequestedProcedureDescription", "ReasonForStudy", "ReasonForTheRequestedProcedure",
    "RequestedProcedureComments", "ImagingServiceRequestComments",
    "ReferencedPerformedProcedureStepSequence", "PerformedProcedureStepID",
    "PerformedProcedureStepDescription", "ScheduledPerformingPhysicianName", "OrderEnteredBy",
    "OrderEntererLocation", "OrderCallbackPhoneNumber", "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest", "ConsultingPhysicianName",
    # the retired order numbers (identifiers of the RIS's order, as their current forms above;
    # Table E.1-1 does not list them), and the retired HardcopyCreationDeviceID (X)
    "PlacerOrderNumberProcedure", "FillerOrderNumberProcedure", "PlacerOrderNumberImagingServiceRequestRetired",
    "FillerOrderNumberImagingServiceRequestRetired", "HardcopyCreationDeviceID", "EthnicGroupCodeSequence",
    "ConsultingPhysicianIdentificationSequence", "IssuerOfAccessionNumberSequence",
    "ScheduledProcedureStepDescription", "ScheduledStationName", "ScheduledStationAETitle",
    "ScheduledProcedureStepLocation", "ScheduledProcedureStepID", "PatientTransportArrangements",
    "StudyIDIssuer", "InterpretationIDIssuer", "ResultsIDIssuer", "DistributionName",
    "DistributionAddress", "PhysicianApprovingInterpretation", "InterpretationRecorder",
    "InterpretationTranscriber", "InterpretationAuthor",
    # series, equipment
    "SeriesDescription", "OperatorsName", "OperatorIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "ProtocolName", "PerformedLocation",
    "PerformedStationName", "PerformedStationAETitle", "StationAETitle", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "InstitutionalDepartmentTypeCodeSequence", "StationName", "DeviceSerialNumber", "DetectorID",
    "PlateID", "CassetteID", "GantryID", "GeneratorID", "SecondaryCaptureDeviceID", "SoftwareVersions",
    "ContributingEquipmentSequence",
    # waveforms: channel and multiplex group labels (free text an operator types), annotations (X, X/D)
    "ChannelLabel", "ChannelDerivationDescription", "MultiplexGroupLabel", "WaveformAnnotationSequence",
    # image, content, SR, trial, integrity
    "ImageComments", "DerivationDescription", "IconImageSequence", "FrameComments",
    "AcquisitionComments", "TextComments", "DigitalSignaturesSequence", "MACParametersSequence",
    "OriginalAttributesSequence", "ModifiedAttributesSequence", "ContentCreatorName",
    "ContentCreatorIdentificationCodeSequence", "AuthorObserverSequence", "ParticipantSequence",
    "VerifyingObserverSequence", "VerifyingObserverName", "VerifyingOrganization", "ContentSequence",
    "DocumentTitle", "ReviewerName", "HumanPerformerName", "HumanPerformerOrganization", "EvaluatorName",
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID", "ClinicalTrialTimePointID",
    "ClinicalTrialCoordinatingCenterName", "ConsentForClinicalTrialUseSequence", "DataSetTrailingPadding",
    # photography (VL Photographic, from EXIF): where the photo was taken and the camera's own
    # notes; GPSDateStamp/GPSTimeStamp go even when dates are retained (GPS never survives)
    "GPSVersionID", "GPSLatitudeRef", "GPSLatitude", "GPSLongitudeRef", "GPSLongitude", "GPSAltitudeRef",
    "GPSAltitude", "GPSTimeStamp", "GPSSatellites", "GPSStatus", "GPSMeasureMode", "GPSDOP", "GPSSpeedRef",
    "GPSSpeed", "GPSTrackRef", "GPSTrack", "GPSImgDirectionRef", "GPSImgDirection", "GPSMapDatum",
    "GPSDestLatitudeRef", "GPSDestLatitude", "GPSDestLongitudeRef", "GPSDestLongitude", "GPSDestBearingRef",
    "GPSDestBearing", "GPSDestDistanceRef", "GPSDestDistance", "GPSProcessingMethod", "GPSAreaInformation",
    "GPSDateStamp", "GPSDifferential", "MakerNote", "LensSpecification",
    # devices, equipment and sources
    "AcquisitionDeviceProcessingDescription", "DeviceDescription", "DeviceSettingDescription", "UDISequence",
    "ModifyingDeviceID", "SourceManufacturer", "SourceSerialNumber", "TreatmentMachineName",
    "SourceIdentifier", "FlowIdentifier", "FlowIdentifierSequence", "FrameOriginTimestamp",
    # people, places and organisations
    "ActualHumanPerformersSequence", "ScheduledHumanPerformersSequence", "CustodialOrganizationSequence",
    "IntendedRecipientsOfResultsIdentificationSequence", "InterpretationApproverSequence",
    "PersonIdentificationCodeSequence", "ScheduledPerformingPhysicianIdentificationSequence",
    "PerformedStationGeographicLocationCodeSequence", "PerformedStationNameCodeSequence",
    "ScheduledStationGeographicLocationCodeSequence", "ScheduledStationNameCodeSequence", "ScheduledStudyLocation",
    "ScheduledStudyLocationAETitle", "ScheduledPatientInstitutionResidence", "RequestedProcedureLocation",
    "ResultsDistributionListSequence", "TelephoneNumberTrial", "VerbalSourceIdentifierCodeSequenceTrial",
    "TopicAuthor", "TopicKeywords", "TopicTitle", "EntityName",
    # patient, visit and request
    "InsurancePlanIdentification", "IssuerOfAdmissionID", "IssuerOfServiceEpisodeID", "SpecialNeeds",
    "PatientPrimaryLanguageModifierCodeSequence", "ReferencedPatientAliasSequence", "PreMedication",
    "ConfidentialityConstraintOnPatientDataDescription", "ReasonForTheImagingServiceRequest",
    "ReasonForRequestedProcedureCodeSequence", "ReasonForVisitCodeSequence", "RequestedContrastAgent",
    # specimens, trials, treatment and content
    "ContainerComponentID", "ContainerDescription", "SlideIdentifier", "SpecimenAccessionNumber",
    "SpecimenShortDescription", "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    "ClinicalTrialSeriesDescription", "ClinicalTrialSeriesID", "DoseReferenceDescription",
    "FractionGroupDescription", "RTPlanName", "RTTreatmentApproachLabel", "ReasonForOmissionDescription",
    "ModifiedImageDescription", "InstanceOriginStatus", "TextString", "GraphicAnnotationSequence",
    # integrity (they would not verify any more) and the request's own UID
    "MAC", "ReferencedDigitalSignatureSequence", "ReferencedSOPInstanceMACSequence", "AffectedSOPInstanceUID",
    "CertifiedTimestamp", "CertificateOfSigner", "NonconformingDataElementValue",
    "NonconformingModifiedAttributesSequence", "ReasonForTheAttributeModification",
    # (the 2024b edition's additions) application entities, trials, RT structures, results
    "NetworkID", "Originator", "ReceivingAE", "RequestingAE", "RetrieveAETitle", "InterpretationID",
    "ResultsID", "IssuerOfClinicalTrialProtocolID", "IssuerOfClinicalTrialSeriesID", "IssuerOfClinicalTrialSiteID",
    "IssuerOfClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectReadingID", "IssuerOfClinicalTrialTimePointID",
    "OtherClinicalTrialProtocolIDsSequence", "DisplacementReferenceLabel", "PositionAcquisitionTemplateName",
    "PyramidDescription", "PyramidLabel", "ROICreatorSequence", "ROIGenerationDescription", "ROIInterpreterSequence",
    "ROIObservationLabel", "RequestedSeriesDescription", "StructureSetName", "TransducerIdentificationSequence",
    "TreatmentSites",
    # D attributes whose VR holds no dummy (binary, ages, URLs): removed
    "SelectorASValue", "SelectorOBValue", "SelectorUNValue", "SelectorURValue",
    # dates of birth and death in another calendar, and identifiers of people, animals, media
    # and devices that no rule by VR reaches (LO, SH, CS): found by running every attribute of
    # the data dictionary through the copy (tests/unit/test_mapping_dicom_deid.py)
    "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar", "PatientAlternativeCalendar",
    "BreedRegistrationNumber", "StorageMediaFileSetID", "DeviceID", "ContactDisplayName", "OwnerID",
    "NTPSourceAddress", "BoardingPassID", "ItineraryID", "ItineraryIDAssigningAuthority", "CarrierID", "RouteID",
    "RouteIDAssigningAuthority",
    # what the private elements were (they are all removed), whose items need names the UC rule
    # would remove (Type 1 there)
    "PrivateDataElementCharacteristicsSequence",
    # model names are free text (a photo's EXIF Model, a sender's own words): the de-identified
    # FHIR view drops the device name too (Manufacturer, Type 2, is emptied)
    "ManufacturerModelName", "SecondaryCaptureDeviceManufacturer", "SecondaryCaptureDeviceManufacturerModelName",
    # the dataset's own ICC profile, as the frames' (its text tags can name a device or a person;
    # the de-identified FHIR image has none)
    "ICCProfile",
    # a CS whose Defined Terms (PS3.16 Annex L) are not enumerated: any upper-case words fit
    # ("JANE DOE"), and the adapter has no table of them; the site stays coded in
    # AnatomicRegionSequence, with the adapter's meaning (privacy review F2)
    "BodyPartExamined",
})
#: Table E.1-1 "D" attributes (Type 1 where they occur): a dummy value of their VR.
BASIC_PROFILE_DUMMY = frozenset({
    "ContainerIdentifier", "SpecimenIdentifier", "DeviceLabel", "EntityLabel", "EntityLongLabel",
    "ClinicalTrialProtocolEthicsCommitteeName", "RadiationDoseIdentificationLabel",
    "RadiationDoseInVivoMeasurementLabel", "RadiationGenerationModeLabel", "RTPlanLabel", "RTPrescriptionLabel",
    "RTToleranceSetLabel", "TreatmentPositionGroupLabel", "TreatmentSite", "UserContentLabel",
    "UserContentLongLabel", "XRayDetectorID", "XRaySourceID", "AcquisitionFieldOfViewLabel",
    "AnnotationGroupLabel", "ModifyingSystem", "StructureSetLabel", "DestinationAE", "SelectorAEValue",
    "SelectorLOValue", "SelectorSHValue",
})
#: The dummy value (fits every string VR of BASIC_PROFILE_DUMMY: SH and AE hold 16 characters).
DUMMY_VALUE = "DEIDENTIFIED"
#: Removed with the dates unless they are retained (it is what gives DA/TM values a zone).
DATES_REMOVE = frozenset({"TimezoneOffsetFromUTC"})
#: UI attributes that name a *kind* of thing (class, syntax, scheme), never an instance: kept.
KEEP_UIDS = frozenset({
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "CodingSchemeUID", "ContextGroupExtensionCreatorUID", "ContextUID",
    "MappingResourceUID", "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID",
    "ReferencedSOPClassUIDInFile", "ReferencedTransferSyntaxUIDInFile", "AffectedSOPClassUID",
    "RequestedSOPClassUID", "SOPClassesInStudy", "PrivateInformationCreatorUID",
})
#: File meta elements removed (they name the sending/receiving application entities).
_META_REMOVE = ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID", "PrivateInformation")
_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
#: UR (URLs, URIs: a PACS's host and the original UIDs in RetrieveURL, a file's path, a contact)
#: and UC (unlimited descriptions) are removed like free text, but for those that name a concept.
_CONCEPT_VALUES = frozenset({"CodingSchemeURL", "URNCodeValue", "LongCodeValue"})
_URL_VRS = frozenset({"UR", "UC"})
_DATE_VRS = frozenset({"DA", "TM", "DT"})
#: The VRs of text a sender writes in its own words (LT, ST, UT and PN are removed above, by VR).
_SENDER_TEXT_VRS = frozenset({"LO", "SH", "UC", "AE"})
#: Of those, what names a concept (PS3.3 8.8, Code Sequence Macro) and stays: the code itself. Its
#: Code Meaning is written anew (adapter.mapping.dicom_code_meanings).
_CODE_TEXT = frozenset({"CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "LongCodeValue", "CodeMeaning"})
#: TimezoneOffsetFromUTC (SH, PS3.3 C.12.1.1.8): "+HHMM" or "-HHMM"; any other value is text.
_UTC_OFFSET = re.compile(r"^[+-][0-9]{4}$")
_JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                            "1.2.840.10008.1.2.4.70"})
_PSEUDONYM_OK = re.compile(r"^[^\\\x00-\x1f]{1,64}$")

# CID 7050 De-identification Method (DCM), meanings as in PS3.16.
DCM_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
DCM_RETAIN_FULL_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
DCM_CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
#: DeidentificationMethod (LO) values for what is released without being cleaned.
#: The attributes a copy keeps when their value is one of the adapter's fixed texts (module docstring).
FIXED_TEXT_ATTRIBUTES = ("ImageComments", "SeriesDescription")
NOT_CLEANED_PIXELS = "Pixel data not cleaned: burned-in text may identify"
NOT_CLEANED_FEATURES = "Pixel data not cleaned: the person may be recognised"
NOT_CLEANED_DOCUMENT = "PDF metadata removed; content not cleaned: it may identify"
#: DeidentificationMethod value when a code meaning the object carried was not the adapter's.
REPLACED_CODE_MEANINGS = "Code meanings replaced: the adapter's tables, else the code"
#: MIMETypeOfEncapsulatedDocument of the only document a copy releases (PS3.3 C.24.2.1).
PDF_MIME_TYPE = "application/pdf"
#: Type 2 attributes of the Encapsulated Document module (PS3.3 C.24.2) that the rules would remove.
_DOCUMENT_TYPE2 = ("DocumentTitle", "ContentTime", "AcquisitionDateTime")


def deidentify(ds: Dataset, *, uid_root: str, key: bytes, fixed_texts: Collection[str] = (),
               code_meanings: Mapping[tuple[str, str], str] | None = None,
               text_in_pixels: bool = False, recognizable: bool = False) -> Dataset:
    """The TRAIN copy: PS3.15 Basic Profile, dates removed, UIDs replaced consistently
    (module docstring). ``fixed_texts``: the adapter's own ImageComments and SeriesDescription
    texts (the secondary image's warning), kept when the object carries one word for word.
    ``code_meanings``: the adapter's own meanings of codes, (Coding Scheme Designator, Code
    Value) -> meaning (adapter.mapping.dicom_photo.code_meanings), written as every code's
    meaning (adapter.mapping.dicom_code_meanings).
    ``text_in_pixels``, ``recognizable``: what the record's kind says its picture may show
    (kinds.yaml), beside what the object says (:func:`_not_cleaned`).

    Raises:
        ConfigurationError: ``uid_root`` is not a usable root or ``key`` is empty.
    """
    out, replaced = _basic(ds, uid_root=uid_root, key=key, context=TRAIN_CONTEXT, keep_dates=False,
                           view_copy=DEIDENTIFIED_COPY, fixed_texts=fixed_texts, code_meanings=code_meanings or {})
    notes = _not_cleaned(ds, text_in_pixels=text_in_pixels, recognizable=recognizable)
    out.PatientIdentityRemoved = _identity_removed(notes)
    _recognizable_features(out, recognizable=recognizable)
    out.LongitudinalTemporalInformationModified = "REMOVED"
    _method(out, _descriptors([DCM_BASIC_PROFILE], out), _replaced(replaced) + notes)
    return out


def pseudonymise(ds: Dataset, *, pseudonym: str, pseudonym_issuer: str, uid_root: str, key: bytes,
                 fixed_texts: Collection[str] = (), code_meanings: Mapping[tuple[str, str], str] | None = None,
                 text_in_pixels: bool = False, recognizable: bool = False, posted_photo: bool = False) -> Dataset:
    """The HRESCH copy: Basic Profile with full dates retained, PatientID = ``pseudonym``
    (the keyed pseudonym the FHIR pseudonymised view shows), IssuerOfPatientID =
    ``pseudonym_issuer`` (the pseudonym identifier system), PatientName = ``pseudonym``;
    ``fixed_texts``, ``code_meanings``, ``text_in_pixels`` and ``recognizable`` as :func:`deidentify`.
    ``posted_photo``: ``ds`` is the adapter's own object of a posted photo, whose StudyTime is
    emptied (:data:`FILED_TIMES`).

    Raises:
        InvalidInput: ``pseudonym`` or ``pseudonym_issuer`` cannot be a LO value.
        ConfigurationError: as :func:`deidentify`.
    """
    for name, value in (("pseudonym", pseudonym), ("pseudonym_issuer", pseudonym_issuer)):
        if not _PSEUDONYM_OK.match(value):
            raise InvalidInput(f"{name} cannot be a DICOM LO value (1..64 characters, no backslash)")
    out, replaced = _basic(ds, uid_root=uid_root, key=key, context=HRESCH_CONTEXT, keep_dates=True,
                           view_copy=PSEUDONYMISED_COPY, fixed_texts=fixed_texts, code_meanings=code_meanings or {})
    out.PatientID = pseudonym
    out.IssuerOfPatientID = pseudonym_issuer
    # family name = the pseudonym; the "^" keeps dciodvfy from reading a one-component name as
    # the retired (pre-1993) PN form
    out.PatientName = f"{pseudonym}^"
    notes = _not_cleaned(ds, text_in_pixels=text_in_pixels, recognizable=recognizable)
    out.PatientIdentityRemoved = _identity_removed(notes)
    _recognizable_features(out, recognizable=recognizable)
    out.LongitudinalTemporalInformationModified = "UNMODIFIED"
    for keyword in CREATION_TIMES:  # the instant the object was made, to the microsecond: its day stays
        if keyword in out:
            del out[keyword]
    for keyword in FILED_TIMES if posted_photo else ():  # may be the instant it was filed: its day stays
        if keyword in out:
            setattr(out, keyword, "")
    _method(out, _descriptors([DCM_BASIC_PROFILE, DCM_RETAIN_FULL_DATES], out), _replaced(replaced) + notes)
    return out


# ---------------------------------------------------------------------------------------------


def _fixed(value: str, fixed_texts: Collection[str]) -> bool:
    """Whether ``value`` is one of ``fixed_texts``, or lines (CR LF: PS3.5 6.1.3) each of which is one."""
    return value in fixed_texts or all(line in fixed_texts for line in value.split("\r\n"))


def _not_cleaned(ds: Dataset, *, text_in_pixels: bool, recognizable: bool) -> list[str]:
    """DeidentificationMethod values saying what was released without being cleaned (module
    docstring): the document; pixels that may show burned-in text (the object's
    BurnedInAnnotation is not NO, or its kind's picture is text by nature); pixels that may show
    the person (RecognizableVisualFeatures not NO, or the kind is recognizable). Absent counts as
    "may" (fail closed)."""
    if "EncapsulatedDocument" in ds:
        return [NOT_CLEANED_DOCUMENT]
    notes = []
    if text_in_pixels or ds.get("BurnedInAnnotation") != "NO":
        notes.append(NOT_CLEANED_PIXELS)
    if recognizable or ds.get("RecognizableVisualFeatures") != "NO":
        notes.append(NOT_CLEANED_FEATURES)
    return notes


def _recognizable_features(out: Dataset, *, recognizable: bool) -> None:
    """RecognizableVisualFeatures YES when the record's kind shows the person (kinds.yaml
    ``recognizable``), whatever the sender wrote: the copy's DeidentificationMethod then says the
    person may be recognised and PatientIdentityRemoved NO, and a pipeline selecting images by
    this attribute (PS3.3 C.7.6.1.1.6) must not be told NO of them (research review finding 4).
    Otherwise the object's value stays as it is (absent: absent, it is Type 3). Not written into
    an encapsulated document, whose module has no such picture to describe."""
    if recognizable and "EncapsulatedDocument" not in out:
        out.RecognizableVisualFeatures = "YES"


def _descriptors(codes: list[tuple[str, str]], out: Dataset) -> list[tuple[str, str]]:
    """``codes`` and, when the copy keeps a descriptor Table E.1-1 removes (ImageComments,
    SeriesDescription: the adapter's own texts, written back after cleaning), the Clean
    Descriptors Option (PS3.15 E.3.5), under which alone a descriptor may stay, cleaned."""
    if any(keyword in out for keyword in FIXED_TEXT_ATTRIBUTES):
        return [*codes, DCM_CLEAN_DESCRIPTORS]
    return codes


def _replaced(replaced: bool) -> list[str]:
    """The DeidentificationMethod value saying the object's code meanings were replaced, if any was."""
    return [REPLACED_CODE_MEANINGS] if replaced else []


def _identity_removed(notes: list[str]) -> str:
    """PatientIdentityRemoved: YES says "the true identity of the patient has been removed from
    the Attributes and the Pixel Data" (PS3.3 C.7.1.1), which a copy whose pixels (or document)
    were released uncleaned cannot say: NO then, so that a reader (or a research PACS gating on it)
    is not told more than was done; the DeidentificationMethod says what was."""
    return "NO" if notes else "YES"


def _basic(ds: Dataset, *, uid_root: str, key: bytes, context: str, keep_dates: bool, view_copy: int,
           fixed_texts: Collection[str], code_meanings: Mapping[tuple[str, str], str]) -> tuple[Dataset, bool]:
    """The copy, and whether a code meaning of the object was replaced (:func:`_clean`)."""
    check_uid_root(uid_root)
    out = copy.deepcopy(ds)
    mapper = _UidMapper(uid_root, key, context)
    out.remove_private_tags()
    replaced = _clean(out, mapper, keep_dates=keep_dates, meanings=code_meanings)
    for keyword in FIXED_TEXT_ATTRIBUTES:  # the adapter's own warnings (module docstring)
        value = ds.get(keyword)
        if isinstance(value, str) and value and _fixed(value, fixed_texts):
            setattr(out, keyword, value)
    if "EncapsulatedDocument" in out:
        for keyword in _DOCUMENT_TYPE2:
            if keyword in ds and keyword not in out:
                setattr(out, keyword, "")
        if str(ds.get("MIMETypeOfEncapsulatedDocument", "")).strip() == PDF_MIME_TYPE:
            # the value the copy writes itself (the sender's LO went with the other text): the
            # only type it releases; any other leaves it out, and the document is refused below
            out.MIMETypeOfEncapsulatedDocument = PDF_MIME_TYPE
        _document_without_metadata(out)
    _clean_frames(out, view_copy)
    meta = getattr(out, "file_meta", None)
    if meta is not None:
        for keyword in _META_REMOVE:
            if keyword in meta:
                delattr(meta, keyword)
        if "SOPInstanceUID" in out:
            meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        # the copy is the adapter's writing (PS3.10 7.1), whoever wrote the stored object (a
        # STOW-RS sender's object is kept with its own File Meta)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return out, replaced


class _UidMapper:
    __slots__ = ("_cache", "_context", "_key", "_root")

    def __init__(self, root: str, key: bytes, context: str) -> None:
        self._root, self._key, self._context = root, key, context
        self._cache: dict[str, str] = {}

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip("\x00 ")
        if not uid or UID(uid).type:  # a well-known UID (SOP class, transfer syntax, scheme…)
            return uid
        if uid not in self._cache:
            self._cache[uid] = keyed_uid(self._root, self._key, uid, context=self._context)
        return self._cache[uid]


def _clean(ds: Dataset, mapper: _UidMapper, *, keep_dates: bool, meanings: Mapping[tuple[str, str], str]) -> bool:
    """Apply the rules to ``ds`` and, recursively, to every sequence item; a code's meaning is
    written anew (:func:`_write_code_meaning`). Whether a meaning the object carried was replaced."""
    replaced = False
    for tag in list(ds.keys()):
        elem = ds[tag]
        allowed = allowed_vrs(tag)
        if allowed is not None and elem.VR not in allowed:
            if not vr_tolerated(tag, elem.VR):
                # the rules go by VR: a UID as LO, a name or a date as LO would pass unchanged
                raise NonConformingVR(tag, elem.VR)
            if _writes_value(elem.keyword, keep_dates=keep_dates):
                elem.VR = dictionary_vr(tag) or elem.VR  # a value of ours, under the tag's own VR
        keyword = elem.keyword
        group = BaseTag(tag).group
        if 0x5000 <= group <= 0x50FF or (0x6000 <= group <= 0x60FF and group % 2 == 0):
            del ds[tag]  # curves and overlays (Table E.1-1: X)
        elif allowed is None:
            del ds[tag]  # a public tag the dictionary does not know (or a group length): unjudged
        elif keyword in BASIC_PROFILE_ZERO or (not keep_dates and keyword in DATES_ZERO):
            _empty(ds, elem)
        elif keyword in BASIC_PROFILE_DUMMY:
            elem.value = DUMMY_VALUE
        elif keyword in DEFINED_TERMS_CHECKED:
            keep_defined_terms(ds, elem)  # CS values the sender wrote: only defined terms stay
        elif _removed(elem, keep_dates=keep_dates) or _sender_text(elem):
            del ds[tag]
        elif elem.VR == "UI" and keyword not in KEEP_UIDS and elem.value:
            if elem.VM > 1:
                elem.value = [UID(mapper(v)) for v in elem.value]
            else:
                elem.value = UID(mapper(elem.value))
        elif elem.VR == "SQ":
            for item in elem.value:
                replaced = _clean(item, mapper, keep_dates=keep_dates, meanings=meanings) or replaced
    if "CodeMeaning" in ds:
        replaced = _write_code_meaning(ds, meanings) or replaced
    return replaced


def _sender_text(elem: DataElement) -> bool:
    """Text in the sender's own words that no rule above removed, emptied or replaced: a value of
    an LO, SH, UC or AE attribute (by the tag's own VR: a CS sent as LO stays a code) that is no
    code (:data:`_CODE_TEXT`) nor a time zone offset that is one. Descriptions, comments, labels
    and names beyond Table E.1-1's list (ViewName, ContentDescription, a LUT's explanation, a
    protocol's name…) go: PS3.15 E.3.5 keeps a descriptor only when cleaned, and the adapter
    cannot tell a clean one from a name (privacy review F2)."""
    keyword = elem.keyword
    if dictionary_vr(elem.tag) not in _SENDER_TEXT_VRS or keyword in _CODE_TEXT:
        return False
    if keyword == "TimezoneOffsetFromUTC":
        return not (isinstance(elem.value, str) and _UTC_OFFSET.match(elem.value.strip()))
    return True


def _write_code_meaning(item: Dataset, meanings: Mapping[tuple[str, str], str]) -> bool:
    """The item's Code Meaning as the adapter's tables give it, or the standard's, or its code
    (adapter.mapping.dicom_code_meanings); removed when the item holds no code value. Whether
    that changed what the object said."""
    before = item.CodeMeaning
    meaning = code_meaning(item, meanings)
    if meaning is None:
        del item.CodeMeaning
        return bool(before)
    item.CodeMeaning = meaning
    return str(before).strip() != meaning


#: Attributes a release gives a value of its own (beside the emptied and dummy ones).
_WRITTEN = frozenset({"PatientID", "IssuerOfPatientID", "PatientName", "PatientIdentityRemoved",
                      "RecognizableVisualFeatures",
                      "LongitudinalTemporalInformationModified", "DeidentificationMethod", "CodeMeaning",
                      "MIMETypeOfEncapsulatedDocument"})


def _writes_value(keyword: str, *, keep_dates: bool) -> bool:
    """Does a release give the attribute a value of its own (empty, a dummy, the pseudonym…)?"""
    return (keyword in BASIC_PROFILE_ZERO or keyword in BASIC_PROFILE_DUMMY or keyword in _WRITTEN
            or keyword in DEFINED_TERMS_CHECKED
            or (not keep_dates and keyword in DATES_ZERO))


def _removed(elem: DataElement, *, keep_dates: bool) -> bool:
    """X: listed, or a name, free text, or (dates not retained) a date/time or the zone."""
    keyword = elem.keyword
    if keyword in BASIC_PROFILE_REMOVE or elem.VR == "PN" or elem.VR in _FREE_TEXT_VRS:
        return True
    if elem.VR in _URL_VRS and keyword not in _CONCEPT_VALUES:
        return True
    return not keep_dates and (keyword in DATES_REMOVE or elem.VR in _DATE_VRS)


def _empty(ds: Dataset, elem: DataElement) -> None:
    if elem.VR == "SQ":
        ds[elem.tag].value = Sequence()
    else:
        ds[elem.tag].value = ""


def _clean_frames(ds: Dataset, view_copy: int) -> None:
    """Encapsulated JPEG frames keep what decoding needs (JFIF, Adobe and the decoding
    segments; no other APPn, no COM and, as in the de-identified FHIR view's image, no ICC
    profile, whose text tags can name a device or a person), each written in the view's own way
    (``view_copy``: adapter.imaging.unlinkable, so that no frame is byte for byte the stored one, or
    the other view's); native pixel data is cut to the frames' own length (anything after them
    is no pixel)."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "")) if meta is not None else ""
    if "PixelData" in ds and syntax and syntax not in _JPEG_SYNTAXES and not ds["PixelData"].is_undefined_length:
        _trim_native(ds)
        return
    if syntax not in _JPEG_SYNTAXES or "PixelData" not in ds:
        return
    frames = int(ds.get("NumberOfFrames") or 1)
    originals = [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=frames)]
    ds.PixelData = encapsulate([
        unlinkable_copy(encapsulated_jpeg(f, icc="dropped").join(), JPEG, view_copy, source=f, unlike=f)
        for f in originals])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True  # PS3.5 A.4: encapsulated is undefined length


def _document_without_metadata(ds: Dataset) -> None:
    """The Encapsulated Document (a PDF) without its metadata (module docstring); its length as
    EncapsulatedDocumentLength, the value padded to even with a NUL (PS3.5 7.1.1: OB).

    Raises:
        UncleanableDocument: the document is not a PDF, or not one that can be cleaned.
    """
    try:
        document = bytes(extract_image(ds).data)
    except UndecodableImage as exc:
        raise UncleanableDocument("the encapsulated document is not a PDF: its metadata cannot be removed",
                                  expression="(0042,0011)") from exc
    cleaned = pdf_without_metadata(document)
    ds.EncapsulatedDocument = cleaned + b"\x00" * (len(cleaned) % 2)
    ds.EncapsulatedDocumentLength = len(cleaned)


def _trim_native(ds: Dataset) -> None:
    """Native pixel data longer than its frames (PS3.5 8.1.1: rows × columns × samples × bits
    allocated × frames, padded to even) holds something that is no pixel: cut to the frames."""
    try:
        bits = int(ds.BitsAllocated)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * \
            int(ds.get("NumberOfFrames") or 1) * bits
    except (AttributeError, TypeError, ValueError):
        return
    length = (expected + 7) // 8
    length += length % 2
    data = ds.PixelData
    if isinstance(data, bytes | bytearray) and len(data) > length:
        ds.PixelData = bytes(data[:length])


def _method(ds: Dataset, codes: list[tuple[str, str]], notes: list[str]) -> None:
    ds.DeidentificationMethod = [meaning[:64] for _, meaning in codes] + [note[:64] for note in notes]
    if "EncapsulatedDocument" in ds:
        # Table E.1-1 gives EncapsulatedDocument a D (a dummy document); its content is released
        # as it is, only its metadata removed (module docstring), so the profile is not claimed
        # in codes: the text says what was done and what was not (DeidentificationMethodCodeSequence
        # is Type 1C: the text is enough).
        if "DeidentificationMethodCodeSequence" in ds:
            del ds.DeidentificationMethodCodeSequence
        return
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)


__all__ = [
    "BASIC_PROFILE_REMOVE", "BASIC_PROFILE_ZERO", "DATES_REMOVE", "DATES_ZERO", "FIXED_TEXT_ATTRIBUTES",
    "HRESCH_CONTEXT", "KEEP_UIDS",
    "NOT_CLEANED_DOCUMENT", "NOT_CLEANED_FEATURES", "NOT_CLEANED_PIXELS", "REPLACED_CODE_MEANINGS", "TRAIN_CONTEXT",
    "deidentify", "pseudonymise",
]
