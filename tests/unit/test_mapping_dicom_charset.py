"""Specific Character Set values checked against PS3.3 C.12.1.1.2's defined terms (PACS review F6)."""

from __future__ import annotations

import warnings

import pytest
from pydicom import Dataset

from adapter.mapping.dicom_charset import undefined_character_sets


@pytest.mark.parametrize(("value", "undefined"), [
    (None, []), ("", []), ("ISO_IR 100", []), ("ISO_IR 192", []), ("GB18030", []), ("ISO_IR 203", []),
    (["", "ISO 2022 IR 87"], []), (["ISO 2022 IR 13", "ISO 2022 IR 87"], []),
    ("ISO_IR 999", ["'ISO_IR 999'"]), ("ISO-8859-1", ["'ISO-8859-1'"]),
    (["ISO 2022 IR 6", "UTF8"], ["'UTF8'"]), ("X" * 60, [repr("X" * 32)]),
])
def test_values_outside_the_defined_terms_are_named(value: object, undefined: list[str]) -> None:
    ds = Dataset()
    if value is not None:  # as received: read without validating it against CS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.SpecificCharacterSet = value
    assert undefined_character_sets(ds) == undefined
