"""Payloads of the GitHub layer (activities/github_*.py): the verdict on a commit's checks, the
pull request a request becomes, GitHub deployments, and the `github_event` signal the webhooks
process hands to the waiting workflow. None carries a secret: activities name their connector
by id and decrypt its credentials themselves."""

import enum
import uuid
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

# The signal the webhooks process sends a request's lifecycle workflow when GitHub reports on
# its pull request, checks or deployments (payload GitHubEvent): verification looks again at
# once instead of at its next poll.
GITHUB_EVENT_SIGNAL = "github_event"

# Retryable, so not ErrorType members: GitHub limited the rate (next_retry_delay carries its
# retry-after or reset), or did not answer (5xx, timeouts, refused connections).
GITHUB_RATE_LIMITED = "GitHubRateLimited"
GITHUB_UNAVAILABLE = "GitHubUnavailable"

# The branch a request's change is pushed to and its pull request opened from.
REQUEST_BRANCH_PREFIX = "changeflow/"


def request_branch(request_id: uuid.UUID) -> str:
    return f"{REQUEST_BRANCH_PREFIX}{request_id}"


def request_of_branch(branch: str | None) -> uuid.UUID | None:
    """The request whose branch this is (`changeflow/<id>`, with or without refs/heads/)."""
    name = (branch or "").removeprefix("refs/heads/")
    if not name.startswith(REQUEST_BRANCH_PREFIX):
        return None
    try:
        return uuid.UUID(name.removeprefix(REQUEST_BRANCH_PREFIX))
    except ValueError:
        return None


class CheckState(enum.StrEnum):
    # Best to worst; the combination of several is the worst (activities/github_checks.py).
    SUCCESS = "success"
    PENDING = "pending"
    FAILURE = "failure"


class CheckKind(enum.StrEnum):
    CHECK_RUN = "check_run"
    STATUS = "status"


class Check(BaseModel):
    """One check of a commit as a person would name it, with the link to its details."""

    name: str
    kind: CheckKind
    state: CheckState
    details_url: str | None = None
    # GitHub's own word: a check run's conclusion or status, a commit status's state.
    github_state: str = ""


class SilencePolicy(enum.StrEnum):
    """What a commit on which no check and no status ever reports means."""

    # The repository has no CI: passed once the grace period has gone by with still nothing.
    PASS_AFTER_GRACE = "pass_after_grace"
    # The repository must have CI: nothing reporting is a failure once the grace period ends.
    FAIL = "fail"


class VerificationPolicy(BaseModel):
    """How long an environment waits for its checks and what silence means."""

    time_limit: timedelta = timedelta(minutes=30)
    # How long to wait for a first report before the silence policy decides.
    grace: timedelta = timedelta(minutes=2)
    on_silence: SilencePolicy = SilencePolicy.PASS_AFTER_GRACE


class VerdictReason(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    # Still waiting: some check is pending, or nothing reported yet within the grace period.
    WAITING = "waiting"
    TIMED_OUT = "timed_out"
    NOTHING_REPORTED = "nothing_reported"


class ChecksVerdict(BaseModel):
    """One look at a commit's checks: `done` once the verification is decided, `ok` when it
    passed (every check passed, or nothing reported and the silence policy lets it pass)."""

    sha: str
    reason: VerdictReason
    ok: bool = False
    checks: list[Check]

    @property
    def done(self) -> bool:
        return self.reason is not VerdictReason.WAITING

    def summary(self) -> str:
        """A readable line: what decided, naming each check that did not pass and its link."""

        def named(c: Check) -> str:
            link = f" ({c.details_url})" if c.details_url else ""
            return f"{c.name}: {c.github_state or c.state.value}{link}"

        failing = [c for c in self.checks if c.state is CheckState.FAILURE]
        pending = [c for c in self.checks if c.state is CheckState.PENDING]
        short = self.sha[:12]
        match self.reason:
            case VerdictReason.PASSED:
                return f"{short}: all {len(self.checks)} checks passed"
            case VerdictReason.FAILED:
                return f"{short}: failed checks: " + "; ".join(named(c) for c in failing)
            case VerdictReason.TIMED_OUT:
                waited = "; ".join(named(c) for c in pending) or "no check reported"
                return f"{short}: time limit reached waiting for: {waited}"
            case VerdictReason.NOTHING_REPORTED:
                allowed = "passed by policy" if self.ok else "failed by policy"
                return f"{short}: no check or status reported ({allowed})"
            case _:
                return f"{short}: waiting for " + (
                    "; ".join(named(c) for c in pending) or "a first report"
                )


class PullRequestPlan(BaseModel):
    """What a request's pull request says: its body is rendered from this (github_target)."""

    request_id: uuid.UUID
    title: str = Field(max_length=250)
    summary: str = ""
    risk_level: str = ""
    risk_reasons: list[str] = []
    estimate_tokens: int | None = None
    approvals: list[str] = []  # who approved, as people read it
    lifecycle_url: str | None = None
    revision: int = 1


class PullRequestRef(BaseModel):
    number: int
    url: str
    branch: str
    head_sha: str
    state: str = "open"  # open or closed
    merged: bool = False


class MergeResult(BaseModel):
    number: int
    merge_sha: str  # the merge answer's sha (API 2026-03-10 has no merge_commit_sha)


class GitHubDeploymentRef(BaseModel):
    id: int
    environment: str
    sha: str


class GitHubEventKind(enum.StrEnum):
    CHECK_RUN = "check_run"
    CHECK_SUITE = "check_suite"
    STATUS = "status"
    DEPLOYMENT_STATUS = "deployment_status"
    PULL_REQUEST = "pull_request"
    # A branch or tag deleted (ref_type; only a request's branch concerns a request).
    DELETE = "delete"


class GitHubEvent(BaseModel):
    """Payload of the `github_event` signal: what happened, not yet trusted as a verdict (the
    workflow reads the checks again; an event only wakes it)."""

    delivery_id: str
    event: GitHubEventKind
    action: str | None = None
    connector_id: uuid.UUID
    request_id: uuid.UUID | None = None
    sha: str | None = None
    pull_number: int | None = None
    # pull_request: closed (merged or not) by whom; synchronize: a push to the branch.
    merged: bool | None = None
    actor: str | None = None
    # check_run / status / deployment_status: the reporter's name and its state.
    name: str | None = None
    state: str | None = None
    received_at: datetime | None = None


class DefaultHead(BaseModel):
    branch: str
    sha: str


# --- Inputs of GitHubActivities (activities/github_activities.py), one per step. ---


class ConnectorStep(BaseModel):
    connector_id: uuid.UUID


class OpenPullRequest(ConnectorStep):
    plan: PullRequestPlan


class MergePullRequest(ConnectorStep):
    number: int
    head_sha: str  # the head that was verified: GitHub refuses the merge if it moved


class LookAtChecks(ConnectorStep):
    sha: str
    # Since the verification of this commit began (workflow time): the policy decides by it.
    elapsed: timedelta
    environment: str = "staging"
    # None: the connector's policy for the environment (its `verification` config).
    policy: VerificationPolicy | None = None


class StartDeployment(ConnectorStep):
    environment: str
    sha: str
    log_url: str
    environment_url: str = ""
    request_id: uuid.UUID | None = None
    # changeflow's Deployment row: a retried start finds the GitHub deployment it created.
    deployment_id: uuid.UUID | None = None


class FinishDeployment(ConnectorStep):
    deployment: GitHubDeploymentRef
    ok: bool
    log_url: str
    environment_url: str = ""
    description: str = ""


class RevertPullRequest(ConnectorStep):
    branch: str  # pushed by the git layer, holding the revert commit
    title: str
    body: str = ""


class EndRequest(ConnectorStep):
    request_id: uuid.UUID
    number: int | None = None
