"""What docs/conformance-statement.md (the DICOM Conformance Statement, PS3.2 Annex A) says agrees
with the code: the SOP classes and transfer syntaxes the SCP accepts, the presentation contexts the
forwarder proposes, the IOD each kind of photo is made as and its SeriesNumber, the defaults of the
configurable parameters, and that the README and docs/dicom.md link it (review pacs F3, F5)."""

from __future__ import annotations

import re

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from adapter.config import Settings
from adapter.dicom.ae import AeOptions
from adapter.dicom.scp import UNCOMPRESSED_SYNTAXES, VERIFICATION, StoreSCP
from adapter.mapping.dicom_decompress import FALLBACKS
from adapter.mapping.dicom_tables import load_dicom_tables
from tests.conftest import ROOT

STATEMENT = ROOT / "docs" / "conformance-statement.md"
TABLES = load_dicom_tables(ROOT / "mappings" / "dicom.yaml")
_UID = re.compile(r"\b1\.2\.840\.10008(?:\.\d+)+\b")


def _table(caption: str) -> list[list[str]]:
    """The rows (cells, header and rule left out) of the Markdown table right after the line
    ``**<caption>**`` in the statement."""
    text = STATEMENT.read_text()
    start = text.index(f"**{caption}**")
    lines = text[start:].splitlines()[1:]
    rows: list[list[str]] = []
    for line in lines:
        if not line.strip():
            if rows:
                break
            continue
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[2:]


def test_the_docs_link_the_statement_from_their_conformance_section() -> None:
    """The conformance section moved from the README to docs/dicom.md; the README's DICOM summary links
    it and the whole statement."""
    dicom = (ROOT / "docs" / "dicom.md").read_text()
    section = dicom[dicom.index("\n### DICOM Conformance Statement\n"):]
    assert "\n## " not in section  # the last section of docs/dicom.md
    assert "(conformance-statement.md)" in section
    for part in ("Network services", "Media Interchange", "Network Interfaces", "Configuration"):
        assert part in section, part
    readme = (ROOT / "README.md").read_text()
    summary = readme[readme.index("\n## DICOM\n"):readme.index("\n## Forwarding to PACS\n")]
    assert "(docs/dicom.md#dicom-conformance-statement)" in summary
    assert "(docs/conformance-statement.md)" in summary


def test_the_network_services_overview_lists_what_the_scp_and_scu_do() -> None:
    rows = {row[1]: (row[2], row[3]) for row in _table("Table A.1-1. Network Services")}
    expected = {VERIFICATION: ("No", "Yes")}
    expected.update((uid, ("No", "Yes")) for uid in TABLES.receive.sop_classes)
    for iod in TABLES.kinds.values():  # what the forwarder sends
        expected[iod.sop_class] = ("Yes", expected.get(iod.sop_class, ("", "No"))[1])
    assert rows == expected


class _Ingest:
    """What StoreSCP reads of its ingest service to build its AE."""

    spool_dir = None
    accepted_sop_classes = tuple(TABLES.receive.sop_classes)


def test_the_scp_accepts_exactly_the_contexts_the_statement_lists() -> None:
    """The SCP's AE as it is built (Verification on pynetdicom's default syntaxes, Deflate and Big
    Endian among them: the statement had only the Little Endian two)."""
    ae = StoreSCP(AeOptions(), _Ingest())._build_ae()  # type: ignore[arg-type]
    accepted = {str(cx.abstract_syntax): set(map(str, cx.transfer_syntax)) for cx in ae.supported_contexts}
    listed = {row[1]: set(_UID.findall(row[2])) for row in _table("Table A.4.2-SCP. Acceptable Presentation Contexts")}
    assert listed == accepted
    assert accepted[VERIFICATION] >= set(map(str, UNCOMPRESSED_SYNTAXES))


def test_the_scu_proposes_exactly_the_contexts_the_statement_lists() -> None:
    """One row per SOP class the forwarder makes and syntax its objects are stored in: the contexts
    proposed for it, in order (its own syntax, then FALLBACKS), one transfer syntax each."""
    rows = _table("Table A.4.2-SCU. Proposed Presentation Contexts")
    listed = {(row[1], _UID.findall(row[2])[0]): _UID.findall(row[3]) for row in rows}
    expected = {}
    for iod in TABLES.kinds.values():
        for stored in (str(JPEGBaseline8Bit), str(ExplicitVRLittleEndian)):
            expected[(iod.sop_class, stored)] = [stored, *map(str, FALLBACKS[stored])]
    assert listed == expected


@pytest.mark.parametrize("kind", sorted(TABLES.kinds))
def test_each_kind_is_made_as_the_iod_and_series_number_the_statement_says(kind: str) -> None:
    rows = {row[0].strip("`"): row for row in _table("Table A.8.1-1. SOP Instances Created")}
    iod = TABLES.kinds[kind]  # type: ignore[index]
    row = rows[kind]
    assert _UID.findall(row[1]) == [iod.sop_class]
    assert row[2] == iod.modality
    assert row[3] == (iod.conversion_type or "")
    assert row[4] == str(iod.series_number)


def test_the_configuration_defaults_are_the_settings_defaults() -> None:
    rows = _table("Table A.4.4-2. Configuration Parameters")
    documented = {row[0].strip("`"): row[1].strip("`") for row in rows if row[0].startswith("`ADAPTER_")}
    assert documented, "no ADAPTER_ setting in the configuration table"
    for name, default in documented.items():
        field = Settings.model_fields[name.removeprefix("ADAPTER_").lower()]
        shown = "(empty)" if field.default == "" else str(field.default).lower() if isinstance(field.default, bool) \
            else str(field.default)
        assert default == shown, (name, default, shown)
