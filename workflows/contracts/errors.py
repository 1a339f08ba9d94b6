"""Every typed error of the product: the `type` of the ApplicationError an activity or a workflow
raises, in one enum, with the one builder of such an error and the one reader of it.

Every type here is a refusal or a failure that retrying cannot mend, so the retry policies'
non-retryable lists are this enum (NON_RETRYABLE_ERROR_TYPES), never a list kept by hand.
"""

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported where an error is built or read: the enum alone (a command that only refuses,
    # `changeflow tenant ...`) loads nothing of Temporal.
    from temporalio.exceptions import ApplicationError


class ErrorType(enum.StrEnum):
    # --- a request to the prompt lifecycle
    UNKNOWN_TENANT = "UnknownTenant"
    UNKNOWN_PROJECT = "UnknownProject"
    UNKNOWN_USER = "UnknownUser"
    USER_OF_ANOTHER_TENANT = "UserOfAnotherTenant"
    ROLE_MAY_NOT_APPROVE = "RoleMayNotApprove"
    SELF_APPROVAL = "SelfApproval"
    STALE_PLAN_HASH = "StalePlanHash"
    NOT_AWAITING_APPROVAL = "NotAwaitingApproval"
    # The same person approves the same plan revision again (with any token).
    ALREADY_APPROVED = "AlreadyApproved"
    EMPTY_PROMPT = "EmptyPrompt"
    PROMPT_TOO_LONG = "PromptTooLong"
    EMPTY_REASON = "EmptyReason"
    REQUEST_CLOSED = "RequestClosed"
    # A start input or update payload that does not fit its model (workflows.contracts.submitted).
    INVALID_REQUEST = "InvalidRequest"
    UNKNOWN_REQUEST = "UnknownRequest"

    # --- a decision's signed token (infra/decision_tokens.py, activities/decisions.py)
    TOKEN_REQUIRED = "TokenRequired"
    # Not a JWT, an algorithm outside the allowed asymmetric ones, or a required claim missing.
    MALFORMED_TOKEN = "MalformedToken"
    BAD_TOKEN_SIGNATURE = "BadTokenSignature"
    TOKEN_EXPIRED = "TokenExpired"
    # exp - iat longer than the configured maximum: a long-lived token is refused outright.
    TOKEN_LIFETIME_TOO_LONG = "TokenLifetimeTooLong"
    WRONG_AUDIENCE = "WrongAudience"
    WRONG_ISSUER = "WrongIssuer"
    WRONG_ACTION = "WrongAction"
    WRONG_REQUEST = "WrongRequest"
    WRONG_TENANT = "WrongTenant"
    # The token names another user than the decision's payload.
    WRONG_USER = "WrongUser"
    TOKEN_REUSED = "TokenReused"

    # --- an operator's tenancy command (the changeflow console)
    SLUG_TAKEN = "SlugTaken"
    EMAIL_TAKEN = "EmailTaken"
    INVALID_POLICY = "InvalidPolicy"
    # A project's repository address that is no path or git URL changeflow can use.
    INVALID_REPOSITORY_URL = "InvalidRepositoryUrl"

    # --- the change engine
    CHANGE_REQUEST_INVALID = "ChangeRequestInvalid"
    REPOSITORY_ERROR = "RepositoryError"
    # The approved change does not apply to the project's default branch as it is now.
    REBASE_CONFLICT = "RebaseConflict"
    # The default branch already holds the approved change (the same change shipped by another
    # request or pushed since it was planned): the request completes without a release.
    CHANGE_ALREADY_PRESENT = "ChangeAlreadyPresent"
    # The model engine's endpoint refused the call (429, 5xx and timeouts are retried instead).
    MODEL_AUTH_FAILED = "ModelAuthFailed"
    MODEL_NOT_FOUND = "ModelNotFound"
    MODEL_CONTEXT_EXCEEDED = "ModelContextExceeded"
    MODEL_REQUEST_REFUSED = "ModelRequestRefused"

    # --- the token ledger (activities.ledger's exceptions carry these)
    LEDGER_ERROR = "LedgerError"
    INSUFFICIENT_TOKENS = "InsufficientTokens"
    IDEMPOTENCY_CONFLICT = "IdempotencyConflict"
    HOLD_NOT_ACTIVE = "HoldNotActive"
    ACCOUNT_NOT_FOUND = "AccountNotFound"
    INVALID_AMOUNT = "InvalidAmount"
    ENTRY_NOT_REFUNDABLE = "EntryNotRefundable"
    INVALID_PERIOD = "InvalidPeriod"

    # --- deployments and rollbacks
    DEPLOYMENT_NOT_FOUND = "DeploymentNotFound"
    PROJECT_NOT_FOUND = "ProjectNotFound"
    PLAN_NOT_FOUND = "PlanNotFound"
    ROLLBACK_TARGET_NEVER_SUCCEEDED = "RollbackTargetNeverSucceeded"
    ROLLBACK_TARGET_IS_LIVE = "RollbackTargetIsLive"
    # Beyond the release retention (Settings.release_retention): its release ref is pruned.
    ROLLBACK_TARGET_TOO_OLD = "RollbackTargetTooOld"
    NO_RELEASE_TO_RESTORE = "NoReleaseToRestore"
    # A production release refused because its commit does not descend from the project's
    # default branch (it moved since the change was committed).
    BASE_MOVED = "BaseMoved"
    # A cancel after production verified the request's release and the default branch moved to
    # it: the change is live; an operator rollback of that deployment is the way back.
    CANCEL_TOO_LATE = "CancelTooLate"
    # The undo of a cancelled request's release found its environment running another release.
    RELEASE_SUPERSEDED = "ReleaseSuperseded"

    # --- the deploy target (activities.deploy_target's exceptions, by class name)
    DEPLOY_TARGET_ERROR = "DeployTargetError"
    UNKNOWN_COMMIT = "UnknownCommit"
    INVALID_ENVIRONMENT = "InvalidEnvironment"
    RELEASE_CONFLICT = "ReleaseConflict"

    # --- connectors and the commerce modules
    CONNECTOR_NOT_FOUND = "ConnectorNotFound"
    # A sync of a connector that is not active (pending, disabled or in error).
    CONNECTOR_NOT_ACTIVE = "ConnectorNotActive"
    INVALID_CONNECTOR_CONFIG = "InvalidConnectorConfig"
    # The outside system refused the stored credentials (Shopify's 401/403).
    INVALID_CREDENTIALS = "InvalidCredentials"
    # No stored credential, or none the key ring can decrypt.
    CREDENTIAL_UNAVAILABLE = "CredentialUnavailable"
    # The outside system answered something the client cannot read (a GraphQL error).
    SOURCE_PROTOCOL_ERROR = "SourceProtocolError"
    INVALID_REPORT_PERIOD = "InvalidReportPeriod"
    # An order file that is not CSV or JSON as documented (no header, a required column
    # missing, not UTF-8): nothing of it is imported.
    INVALID_IMPORT_FILE = "InvalidImportFile"
    # An order file read to its end without one row that could be imported.
    NO_VALID_IMPORT_ROW = "NoValidImportRow"
    # A notification webhook answered a 4xx other than 408/429: retrying would not help.
    WEBHOOK_REJECTED = "WebhookRejected"

    # --- GitHub projects (activities/github_*.py)
    # GitHub refused a request for a reason retrying cannot mend (404, 422, 403 without a
    # rate limit); the message carries GitHub's own words.
    GITHUB_REFUSED = "GitHubRefused"
    # The pull request's merge was refused by the repository's rules (branch protection:
    # required reviews or checks; a conflict): a person must act on GitHub.
    MERGE_REFUSED = "MergeRefused"
    # The request's pull request was closed, or its branch deleted, outside changeflow.
    PULL_REQUEST_CLOSED = "PullRequestClosed"

    # --- a state change models.transitions does not allow (its exception's class name)
    ILLEGAL_TRANSITION = "IllegalTransition"


NON_RETRYABLE_ERROR_TYPES: list[str] = [kind.value for kind in ErrorType]

# Retryable, so not an ErrorType member: the model endpoint did not answer (refused connection,
# timeout, 429, 5xx). Its details are (seconds planning may wait for the endpoint in all,); the
# lifecycle retries planning itself, showing it in the status, and ends the request FAILED with
# this type once that time has passed.
MODEL_UNAVAILABLE = "ModelUnavailable"


# The details key of a quoting refusal's whole reason (refused_quoting).
QUOTED_REASON = "quoted_reason"


def refused_quoting(kind: ErrorType, message: str, reason: str) -> "ApplicationError":
    """A refusal whose whole reason quotes what a model or a tenant wrote: the history shows
    `message` (ours, readable), the reason rides in the details, which the codec encrypts, and
    `error_message` gives it back to the workflow."""
    return refused(kind, message, {QUOTED_REASON: reason})


def refused(kind: ErrorType, message: str, *details: object) -> "ApplicationError":
    """The typed, non-retryable ApplicationError of `kind`."""
    from temporalio.exceptions import ApplicationError

    return ApplicationError(message, *details, type=kind.value, non_retryable=True)


def application_error(err: BaseException) -> "ApplicationError | None":
    """The ApplicationError behind an activity, child or workflow failure: the first one down
    its cause chain (the error itself included), or None."""
    from temporalio.exceptions import ApplicationError

    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return cause
        cause = cause.__cause__
    return None


def error_type(err: BaseException) -> str | None:
    found = application_error(err)
    return found.type if found else None


def error_message(err: BaseException) -> str:
    """The whole reason of a failure: a quoting refusal's encrypted reason, else its message."""
    found = application_error(err)
    if found is None:
        return str(err)
    quoted = next((d[QUOTED_REASON] for d in found.details if isinstance(d, dict)), None)
    return quoted if isinstance(quoted, str) else found.message
