"""adapter.services.search_escaping: FHIR search parameter escaping (R4 search.html#escaping:
``\\,`` ``\\$`` ``\\|`` ``\\\\``), and parse_search reading every token, identifier and reference
value through it (review ingest F6: ``patient:identifier=sys|A\\,B`` was split at the escaped comma,
and its second half, ``B``, a value in any system, found another patient's photos)."""

from __future__ import annotations

import pytest

from adapter.errors import InvalidQuery
from adapter.model.photo import Identifier
from adapter.services.search_escaping import search_values, token_parts, unescape
from adapter.services.search_params import parse_search
from adapter.store.port import TokenCriterion

SYSTEM = "urn:oid:2.999.1.1"


@pytest.mark.parametrize(("value", "values"), [
    ("a,b", ["a", "b"]),
    ("a", ["a"]),
    ("", [""]),
    ("a,", ["a", ""]),
    (r"A\,B", [r"A\,B"]),                     # an escaped comma is part of the value
    (r"A\\,B", [r"A\\", "B"]),                # an escaped backslash, then a separator
    (r"A\\\,B", [r"A\\\,B"]),                 # an escaped backslash, then an escaped comma
    (r"s|A\,B,s|C", [r"s|A\,B", "s|C"]),
    (r"s\|x|A,B", [r"s\|x|A", "B"]),          # | is not a separator of values
    (r"A\$B,C", [r"A\$B", "C"]),
])
def test_values_are_split_at_unescaped_commas_only_and_keep_their_escapes(value: str, values: list[str]) -> None:
    assert search_values(value, "p") == values


@pytest.mark.parametrize(("value", "parts"), [
    ("s|v", ("s", "v")),
    ("v", (None, "v")),
    ("|v", ("", "v")),
    ("s|", ("s", "")),
    (r"s|A\|B", ("s", "A|B")),
    (r"s|A\,B", ("s", "A,B")),
    (r"s|A\$B", ("s", "A$B")),
    (r"s|A\\B", ("s", "A\\B")),
    (r"s|A\\", ("s", "A\\")),
    (r"urn:oid:2.999\|1.1|AB", ("urn:oid:2.999|1.1", "AB")),
    (r"urn:oid:2.999|1.1\|AB", ("urn:oid:2.999", "1.1|AB")),
    (r"A\|B", (None, "A|B")),                 # a value alone holding a |
    ("A$B", (None, "A$B")),                   # no composite parameters: $ is a character
])
def test_a_token_splits_at_its_one_unescaped_bar_and_each_part_is_unescaped(
        value: str, parts: tuple[str | None, str]) -> None:
    assert token_parts(value, "p") == parts


@pytest.mark.parametrize("value", ["urn:oid:2.999|1.1|AB", "s|A|B", "a|b|c|d", "||"])
def test_a_token_with_more_than_one_unescaped_bar_is_refused_not_guessed(value: str) -> None:
    """Which | separates the system? ``urn:oid:2.999|1.1|AB`` is system ``urn:oid:2.999|1.1`` and
    value ``AB``, or system ``urn:oid:2.999`` and value ``1.1|AB``: two patients. Taken as the
    second (the first | as the separator), it found that other patient."""
    with pytest.raises(InvalidQuery) as refused:
        token_parts(value, "patient:identifier")
    assert refused.value.expression == ["patient:identifier"]
    assert "\\|" in refused.value.diagnostics


@pytest.mark.parametrize("value", ["A\\B", "A\\", "\\", "s|A\\n", "A\\ B"])
def test_a_backslash_that_escapes_nothing_is_refused(value: str) -> None:
    """FHIR: a \\ in a value is sent as \\\\; a lone one is no value the client could mean
    surely (``A\\B``: ``A\\B``, or a mistyped escape): refused, naming the parameter."""
    with pytest.raises(InvalidQuery) as refused:
        search_values(value, "identifier")
    assert refused.value.expression == ["identifier"]
    with pytest.raises(InvalidQuery):
        token_parts(value, "identifier")
    with pytest.raises(InvalidQuery):
        unescape(value, "identifier")


@pytest.mark.parametrize(("value", "plain"), [
    (r"A\,B", "A,B"), (r"A\|B", "A|B"), (r"A\$B", "A$B"), (r"A\\B", "A\\B"), ("AB", "AB"), (r"\\\\", "\\\\"),
])
def test_unescape(value: str, plain: str) -> None:
    assert unescape(value, "p") == plain


def test_the_diagnostics_do_not_quote_the_value() -> None:
    """A search value may be a patient identifier: the refusal names the parameter, not the value."""
    for refuse in (lambda: token_parts("urn:x|MRN-SECRET|9", "patient:identifier"),
                   lambda: search_values("MRN-SECRET\\9", "patient:identifier")):
        with pytest.raises(InvalidQuery) as refused:
            refuse()
        assert "MRN-SECRET" not in refused.value.diagnostics


# parse_search: every parameter that splits a value on , or | reads it through the splitter


def test_an_escaped_comma_in_a_patient_identifier_is_one_identifier_not_an_or_of_two() -> None:
    """The privacy defect of review ingest F6: ``A\\,B`` was two values, ``<system>|A\\`` and
    ``B``, the second a value in any system, which is patient B's identifier."""
    criteria = parse_search("Media", [("patient:identifier", rf"{SYSTEM}|A\,B")]).criteria
    assert criteria.patient == (Identifier(system=SYSTEM, value="A,B"),)
    assert criteria.patient_value is None


@pytest.mark.parametrize("name", ["patient:identifier", "subject:identifier", "patient.identifier",
                                  "subject.identifier"])
@pytest.mark.parametrize(("value", "identifier"), [
    (rf"{SYSTEM}|A\|B", (SYSTEM, "A|B")),
    (r"urn:oid:2.999\|1.1|AB", ("urn:oid:2.999|1.1", "AB")),
    (r"urn:oid:2.999|1.1\|AB", ("urn:oid:2.999", "1.1|AB")),
    (rf"{SYSTEM}|A\\B", (SYSTEM, "A\\B")),
    (rf"{SYSTEM}|A\$B", (SYSTEM, "A$B")),
])
def test_patient_identifiers_are_unescaped(name: str, value: str, identifier: tuple[str, str]) -> None:
    resource_type = "DocumentReference" if "." in name else "Media"
    criteria = parse_search(resource_type, [(name, value)]).criteria
    assert criteria.patient == (Identifier(system=identifier[0], value=identifier[1]),)
    assert criteria.patient_value is None


def test_a_value_alone_is_unescaped_and_an_or_still_splits() -> None:
    criteria = parse_search("Media", [("patient:identifier", rf"A\,B,{SYSTEM}|C\|D")]).criteria
    assert criteria.patient_value == ("A,B",)
    assert criteria.patient == (Identifier(system=SYSTEM, value="C|D"),)


@pytest.mark.parametrize("name", ["patient:identifier", "identifier", "encounter:identifier", "category",
                                  "status"])
def test_an_ambiguous_token_is_refused_on_every_token_parameter(name: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_search("Media", [(name, "urn:oid:2.999|1.1|AB")])


@pytest.mark.parametrize("name", ["patient:identifier", "identifier", "encounter:identifier", "patient", "_id",
                                  "encounter", "date", "_lastUpdated", "status"])
def test_a_lone_backslash_is_refused_on_every_parameter_that_splits(name: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_search("Media", [(name, "x\\y")])


def test_record_and_encounter_identifiers_are_unescaped() -> None:
    criteria = parse_search("Media", [("identifier", r"urn:ietf:rfc:3986|urn:x\|y\,z"),
                                      ("encounter:identifier", r"urn:enc\|1|E\,1")]).criteria
    assert criteria.tokens == (
        (TokenCriterion(param="identifier", code="urn:x|y,z", system="urn:ietf:rfc:3986"),),
        (TokenCriterion(param="encounter:identifier", code="E,1", system="urn:enc|1"),),
    )


def test_a_token_code_with_an_escaped_comma_is_one_code() -> None:
    criteria = parse_search("Media", [("category", r"http://example.org/c|a\,b")]).criteria
    assert criteria.tokens == ((TokenCriterion(param="category", code="a,b", system="http://example.org/c"),),)


def test_references_are_split_and_unescaped() -> None:
    """A reference to another server's resource is a URL, which may hold a comma (RFC 3986 allows
    it in a path): escaped, it is one reference."""
    url = "http://ehr.example.org/fhir/Patient/p,9"
    criteria = parse_search("Media", [("patient", r"http://ehr.example.org/fhir/Patient/p\,9")]).criteria
    assert criteria.patient_reference == (url,)
    criteria = parse_search("Provenance", [("target", r"http://other.example.org/fhir/Media/m\,1,Media/m2")]).criteria
    assert [t.code for t in criteria.tokens[0]] == ["http://other.example.org/fhir/Media/m,1", "Media/m2"]


def test_status_and_id_split_at_unescaped_commas() -> None:
    criteria = parse_search("Media", [("status", "completed,entered-in-error"), ("_id", "a,b")]).criteria
    assert criteria.status == ("completed", "entered-in-error") and criteria.ids == ("a", "b")


def test_the_limit_of_or_values_counts_the_values_not_the_escaped_commas() -> None:
    one_value = "\\,".join(["x"] * 150)  # 150 parts joined by escaped commas: one identifier
    criteria = parse_search("Media", [("patient:identifier", f"{SYSTEM}|{one_value}")]).criteria
    assert criteria.patient == (Identifier(system=SYSTEM, value=",".join(["x"] * 150)),)
