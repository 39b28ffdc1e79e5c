"""The policy and mapping tables: an invalid policy stops start-up with a message naming the
element."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adapter.errors import PolicyError
from adapter.mapping.dicom_tables import load_dicom_tables
from adapter.mapping.tables import load_tables
from tests.conftest import ROOT

MAPPINGS = ROOT / "mappings"


def _policy(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load((MAPPINGS / "policy.yaml").read_text())
    mutate(data)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_policy_and_tables_load() -> None:
    tables = load_tables(MAPPINGS, MAPPINGS / "policy.yaml")
    assert "TREAT" in tables.policy.consent.care_purposes
    assert tables.purposes.ancestors("BTG") == ["BTG", "ETREAT", "TREAT"]


@pytest.mark.parametrize("mutate,where", [
    (lambda p: p.update(unknownKey=1), "unknownKey: no such key"),
    # a key misspelt: said so, with the one meant (deployer review F6; was pydantic's "Extra inputs")
    (lambda p: p["consent"].update(writenRequired=True),
     "consent.writenRequired: no such key (did you mean writtenRequired?)"),
    (lambda p: p["consent"].update(writtenRequired="sometimes"), "consent.writtenRequired"),
    (lambda p: p["consent"].update(explicitPurposes=["TRAIN", "EDU"]), "EDU"),
    (lambda p: p["consent"].update(carePurposes=["TREAT", "TRAIN"]), "TRAIN"),
    (lambda p: p["labels"].update(confidentiality="X"), "labels.confidentiality"),
    (lambda p: p["limits"].update(maxPixels=0), "limits.maxPixels"),
    (lambda p: p.pop("organisation"), "organisation"),
    # named neither the file nor the element, and quoted the title truncated (ops review 12)
    (lambda p: p.update(allowedAETitles=["PACS", "THIS_AE_TITLE_IS_TOO_LONG"]),
     "allowedAETitles[1]: 'THIS_AE_TITLE_IS_TOO_LONG' is not an AE title"),
    # a title bound to its hosts takes an address or a network, not a name (PACS review 3)
    (lambda p: p.update(allowedAETitles=["PACS@pacs.hospital.example"]),
     "allowedAETitles[0]: 'PACS@pacs.hospital.example': after '@': 'pacs.hospital.example' is not an IP address or a network"),
    (lambda p: p.update(allowedAETitles=["THIS_AE_TITLE_IS_TOO_LONG@10.0.0.1"]),
     "allowedAETitles[0]: 'THIS_AE_TITLE_IS_TOO_LONG' is not an AE title"),
])
def test_an_invalid_policy_is_refused_naming_the_element(tmp_path: Path, mutate, where: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PolicyError) as info:
        load_tables(MAPPINGS, _policy(tmp_path, mutate))
    assert where in info.value.diagnostics


def test_a_policy_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("consent: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_tables(MAPPINGS, bad)


def test_a_missing_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_tables(MAPPINGS, tmp_path / "nope.yaml")


def test_a_missing_policy_is_named_before_the_tables_beside_it(tmp_path: Path) -> None:
    # ADAPTER_POLICY mistyped: the tables' folder defaults to the policy's, so they are missing
    # too, but the message names the policy (it named tmp_path/purposes.yaml)
    with pytest.raises(PolicyError) as info:
        load_tables(tmp_path, tmp_path / "nope.yaml")
    assert info.value.diagnostics.startswith(f"{tmp_path / 'nope.yaml'}:")
    assert "ADAPTER_POLICY" in info.value.diagnostics


def test_a_missing_table_names_the_setting_of_its_folder(tmp_path: Path) -> None:
    # a policy copied out of mappings/ leaves its tables behind: say where they are looked for
    policy = tmp_path / "policy.yaml"
    policy.write_text((MAPPINGS / "policy.yaml").read_text())
    with pytest.raises(PolicyError) as info:
        load_tables(tmp_path, policy)
    assert info.value.diagnostics.startswith(f"{tmp_path / 'purposes.yaml'}:")
    assert "ADAPTER_MAPPINGS_DIR" in info.value.diagnostics


def test_a_cycle_in_the_purpose_hierarchy_is_refused(tmp_path: Path) -> None:
    # A parent chain that loops has no root: each code would cover the other, and the labels'
    # walk down the hierarchy (adapter.consent.decision) never ended (found by the diff review)
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for name in ("kinds.yaml", "body_sites.yaml", "dicom.yaml"):
        (mappings / name).write_text((MAPPINGS / name).read_text())
    purposes = yaml.safe_load((MAPPINGS / "purposes.yaml").read_text())
    purposes["codes"]["TRAIN"]["parent"] = "MLTRAINING"
    purposes["codes"]["MLTRAINING"]["parent"] = "TRAIN"
    (mappings / "purposes.yaml").write_text(yaml.safe_dump(purposes))
    with pytest.raises(PolicyError) as info:
        load_tables(mappings, _policy(tmp_path, lambda p: None))
    assert "TRAIN" in info.value.diagnostics and "cycle" in info.value.diagnostics


@pytest.mark.parametrize("element", ["explicitPurposes", "carePurposes"])
def test_a_break_glass_purpose_that_is_also_consented_or_care_is_refused(tmp_path: Path, element: str) -> None:
    # TRAIN listed as break-glass too got the full identified view without any Consent (ops review)
    code = "TRAIN" if element == "explicitPurposes" else "COC"
    policy = _policy(tmp_path, lambda p: p["breakGlass"]["purposes"].append(code))
    with pytest.raises(PolicyError) as info:
        load_tables(MAPPINGS, policy)
    message = info.value.diagnostics
    assert message.startswith(f"{policy}:")
    assert "breakGlass.purposes" in message and f"consent.{element}" in message and code in message


def test_a_break_glass_parent_of_a_consented_purpose_is_refused(tmp_path: Path) -> None:
    # code review: a code is break-glass when a parent of it is listed there; HOPERAT (TRAIN's
    # parent) listed as break-glass, and out of explicitPurposes, let TRAIN read identified
    # records without a Consent though explicitPurposes still named it
    def change(p: dict) -> None:
        p["consent"]["explicitPurposes"].remove("HOPERAT")
        p["breakGlass"]["purposes"].append("HOPERAT")
    policy = _policy(tmp_path, change)
    with pytest.raises(PolicyError) as info:
        load_tables(MAPPINGS, policy)
    assert "TRAIN (under HOPERAT)" in info.value.diagnostics and "consent.explicitPurposes" in info.value.diagnostics


@pytest.mark.parametrize("text,key", [
    # a second block at the end replaced the first, silently (yaml.safe_load keeps the last)
    ("\nconsent:\n  writtenRequired: true\n", "consent"),
    ("", "writtenRequired"),
])
def test_a_key_given_twice_is_refused_naming_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    source = (MAPPINGS / "policy.yaml").read_text()
    if not text:  # nested, in the same mapping
        source = source.replace("  writtenRequired: false", "  writtenRequired: true\n  writtenRequired: false", 1)
    path = tmp_path / "policy.yaml"
    path.write_text(source + text)
    with pytest.raises(PolicyError) as info:
        load_tables(MAPPINGS, path)
    message = info.value.diagnostics
    assert message.startswith(f"{path}:") and f"duplicate key '{key}'" in message


def test_a_duplicate_key_in_a_mapping_table_is_refused(tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for name in ("purposes.yaml", "body_sites.yaml", "dicom.yaml", "policy.yaml"):
        (mappings / name).write_text((MAPPINGS / name).read_text())
    kinds = (MAPPINGS / "kinds.yaml").read_text()
    (mappings / "kinds.yaml").write_text(kinds + "\n" + kinds.split("\n\n")[0] + "\n")
    with pytest.raises(PolicyError, match="kinds.yaml: duplicate key 'clinical' at line 57"):
        load_tables(mappings, mappings / "policy.yaml")


@pytest.mark.parametrize("change,named", [
    (lambda b: b["paired"].pop("69536005"), "69536005"),
    (lambda b: b.pop("paired"), "paired"),
    (lambda b: b["paired"].update({"12345678": False}), "12345678"),
    (lambda b: b["laterality"]["right"].update(dicom="U"), "laterality.right.dicom"),
])
def test_a_body_site_without_its_pairing_is_refused(tmp_path: Path, change, named: str) -> None:  # type: ignore[no-untyped-def]
    """Found by the DICOM review: whether a body site is paired decides whether an object carries
    series Laterality (PS3.3 C.7.3.1), so every code says so in mappings/body_sites.yaml; one added
    without it would give objects dciodvfy refuses. ImageLaterality of a side is R, L or B (U means
    unpaired)."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for name in ("purposes.yaml", "kinds.yaml", "dicom.yaml", "policy.yaml"):
        (mappings / name).write_text((MAPPINGS / name).read_text())
    sites = yaml.safe_load((MAPPINGS / "body_sites.yaml").read_text())
    change(sites)
    (mappings / "body_sites.yaml").write_text(yaml.safe_dump(sites))
    with pytest.raises(PolicyError) as info:
        load_tables(mappings, mappings / "policy.yaml")
    assert "body_sites.yaml" in info.value.diagnostics and named in info.value.diagnostics


def test_every_shipped_body_site_says_whether_it_is_paired() -> None:
    sites = load_tables(MAPPINGS, MAPPINGS / "policy.yaml").body_sites
    assert set(sites.paired) == set(sites.codes)
    assert not sites.paired["69536005"] and sites.paired["14975008"]  # Head unpaired, forearm paired


def test_a_policy_may_bind_an_allowed_ae_title_to_its_hosts(tmp_path: Path) -> None:
    tables = load_tables(MAPPINGS, _policy(tmp_path, lambda p: p.update(
        allowedAETitles=["PACS@10.1.2.0/24", "PACS@192.0.2.7", "MODALITY", "WS@2001:db8::1"])))
    assert tables.policy.allowed_ae_titles == ["PACS@10.1.2.0/24", "PACS@192.0.2.7", "MODALITY", "WS@2001:db8::1"]


@pytest.mark.parametrize("kind", ["clinical", "secondary"])
def test_document_types_are_for_the_document_kind_only(tmp_path: Path, kind: str) -> None:
    """Safety review finding 2: a code that made a record secondary or clinical by itself would
    decide its consent from what a sender's code was guessed to mean; only ``document`` lists the
    DocumentReference types that say a record is a photographed document (over ``POST /fhir``)."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for name in ("purposes.yaml", "body_sites.yaml", "dicom.yaml", "policy.yaml"):
        (mappings / name).write_text((MAPPINGS / name).read_text())
    kinds = yaml.safe_load((MAPPINGS / "kinds.yaml").read_text())
    kinds[kind]["documentTypes"] = [{"system": "http://loinc.org", "code": "11502-2"}]
    (mappings / "kinds.yaml").write_text(yaml.safe_dump(kinds))
    with pytest.raises(PolicyError) as info:
        load_tables(mappings, mappings / "policy.yaml")
    assert "kinds.yaml" in info.value.diagnostics and "documentTypes" in info.value.diagnostics


def test_a_kinds_table_without_document_types_takes_no_code_as_a_document(tmp_path: Path) -> None:
    """A deployment's own kinds.yaml written before ``documentTypes`` loads, and lists none."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for name in ("purposes.yaml", "body_sites.yaml", "dicom.yaml", "policy.yaml"):
        (mappings / name).write_text((MAPPINGS / name).read_text())
    kinds = yaml.safe_load((MAPPINGS / "kinds.yaml").read_text())
    kinds["document"].pop("documentTypes", None)
    (mappings / "kinds.yaml").write_text(yaml.safe_dump(kinds))
    assert all(not k.document_types for k in load_tables(mappings, mappings / "policy.yaml").kinds.values())


def test_a_kind_whose_picture_is_text_is_burned_in_annotation_yes_in_its_dicom_object() -> None:
    """kinds.yaml ``textInPixels`` (the FHIR views' REDACTED, clinical-safety review F3) and
    dicom.yaml's ``burnedInAnnotation`` of the kind's DICOM object say one thing; and every kind
    the adapter ships may identify its patient by its picture (a photo of the person, a document,
    a screen), so that no restricted view of a posted photo claims it anonymised."""
    tables = load_tables(MAPPINGS, MAPPINGS / "policy.yaml")
    dicom = load_dicom_tables(MAPPINGS / "dicom.yaml")
    for kind, entry in tables.kinds.items():
        assert (dicom.kinds[kind].burned_in_annotation == "YES") == entry.text_in_pixels, kind
        assert tables.pixels_may_identify(kind), kind


def test_a_kinds_table_from_before_text_in_pixels_loads_and_claims_no_anonymity(tmp_path: Path) -> None:
    """Review of the day's merges: an organisation's kinds.yaml edited before ``textInPixels`` was
    read stopped the adapter (a required field). Absent, it is True: the picture may identify, so
    no restricted view claims anonymised (fail closed), and the adapter starts."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for name in ("purposes.yaml", "body_sites.yaml", "dicom.yaml"):
        (mappings / name).write_text((MAPPINGS / name).read_text())
    kinds = yaml.safe_load((MAPPINGS / "kinds.yaml").read_text())
    for entry in kinds["kinds"].values() if "kinds" in kinds else kinds.values():
        entry.pop("textInPixels", None)
    (mappings / "kinds.yaml").write_text(yaml.safe_dump(kinds))
    tables = load_tables(mappings, _policy(tmp_path, lambda p: None))
    assert all(tables.pixels_may_identify(kind) for kind in tables.kinds)


def test_a_policy_path_naming_a_directory_says_it_is_one(tmp_path: Path) -> None:
    # newcomer review 9: ADAPTER_POLICY=<a folder> said "policy file not found", and the path exists
    with pytest.raises(PolicyError) as refused:
        load_tables(ROOT / "mappings", ROOT / "mappings")
    said = refused.value.diagnostics
    assert "is a directory, not a file" in said and "ADAPTER_POLICY" in said and "not found" not in said
    assert "policy.yaml" in said  # the file in it to name
