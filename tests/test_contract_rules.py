"""The contract package's own rules: ids round-trip, every typed error is non-retryable, and
the cause chain is read down to the ApplicationError."""

import uuid

from temporalio.exceptions import ActivityError, ApplicationError, RetryState

from workflows.contracts.errors import (
    NON_RETRYABLE_ERROR_TYPES,
    ErrorType,
    application_error,
    error_message,
    error_type,
    refused,
)
from workflows.contracts.ids import (
    deployment_id_of_rollback,
    deployment_workflow_id,
    rollback_workflow_id,
)


def test_a_rollback_workflow_id_gives_back_its_deployment_id():
    deployment_id = uuid.uuid4()
    assert deployment_id_of_rollback(rollback_workflow_id(deployment_id)) == deployment_id


def test_other_workflow_ids_name_no_rollback_deployment():
    assert deployment_id_of_rollback(deployment_workflow_id(uuid.uuid4())) is None
    assert deployment_id_of_rollback("rollback-not-a-uuid") is None


def test_every_error_type_is_in_the_non_retryable_list():
    assert set(NON_RETRYABLE_ERROR_TYPES) == {kind.value for kind in ErrorType}
    assert "PlanNotFound" in NON_RETRYABLE_ERROR_TYPES


def test_a_refusal_is_typed_and_final():
    error = refused(ErrorType.STALE_PLAN_HASH, "stale")
    assert (error.type, error.message, error.non_retryable) == ("StalePlanHash", "stale", True)


def test_the_cause_chain_is_walked_to_the_application_error():
    cause = refused(ErrorType.REBASE_CONFLICT, "does not apply")
    outer = ActivityError(
        "activity failed",
        scheduled_event_id=1,
        started_event_id=2,
        identity="worker",
        activity_type="apply_change",
        activity_id="1",
        retry_state=RetryState.NON_RETRYABLE_FAILURE,
    )
    outer.__cause__ = cause
    assert application_error(outer) is cause
    assert error_type(outer) == ErrorType.REBASE_CONFLICT
    assert error_message(outer) == "does not apply"
    assert application_error(RuntimeError("plain")) is None
    assert error_message(RuntimeError("plain")) == "plain"
    assert isinstance(cause, ApplicationError)
