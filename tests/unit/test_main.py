"""``python -m adapter``: what an operator reads when the adapter cannot start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adapter.__main__ import serve
from adapter.config import Settings


def test_serve_names_the_policy_not_the_dicom_scp_when_the_policy_is_missing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the DICOM SCP's services are built first, so their failure to load the policy was
    # reported as "cannot start the DICOM SCP or the forwarder"
    settings = Settings(policy=tmp_path / "nope.yaml", data_dir=tmp_path / "data")
    with caplog.at_level(logging.ERROR, logger="adapter"):
        assert serve(settings) == 2
    message = caplog.messages[-1]
    assert "nope.yaml" in message
    assert "DICOM" not in message and "forwarder" not in message
