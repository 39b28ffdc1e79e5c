"""The error hierarchy and its edge tables: every subclass has an HTTP status, every error
renders as a valid OperationOutcome."""

from __future__ import annotations

import inspect

from fhir.resources.R4B.operationoutcome import OperationOutcome

from adapter import errors
from adapter.api.outcome import HTTP_STATUS, status_for
from adapter.mapping.outcome import outcome_from_error

ALL = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.AdapterError)]


def test_every_error_class_is_in_the_http_table() -> None:
    assert set(ALL) <= set(HTTP_STATUS), set(ALL) - set(HTTP_STATUS)


def test_statuses_that_clients_rely_on() -> None:
    assert status_for(errors.PurposeOfUseMissing("x")) == 403
    assert status_for(errors.UnknownPurposeOfUse("x")) == 400
    assert status_for(errors.ConsentRequired("x")) == 422
    assert status_for(errors.UnsupportedMediaType("x")) == 415
    assert status_for(errors.NotAcceptable("x")) == 406
    assert status_for(errors.PayloadTooLarge("x")) == 413
    assert status_for(errors.RequestTimeout("x")) == 408
    assert status_for(errors.PreconditionFailed("x")) == 412
    assert status_for(errors.StorageError("x")) == 503
    assert status_for(errors.AmbiguousRequest("x")) == 400  # security review 3


def test_every_error_renders_a_valid_operation_outcome() -> None:
    for cls in ALL:
        body = outcome_from_error(cls("diagnostic text", expression="Media.status"))
        OperationOutcome.model_validate(body)
        assert body["issue"][0]["code"] == cls.issue_type
