"""What the GitHub stand-in remembers: GitHub's objects as plain records, its clock, and the
error GitHub answers with. The rules over them live in state.py."""

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from scripts.github_stand_in.bare_repo import BareRepository

INSTALLATION_TOKEN_LIFETIME = timedelta(hours=1)
# The longest App JWT GitHub accepts: exp at most ten minutes after now.
JWT_MAX_LIFETIME = timedelta(minutes=10)
# The app GitHub Actions' check runs belong to (id, slug, name).
GITHUB_ACTIONS_APP = (15368, "github-actions", "GitHub Actions")
# Check-run conclusions and commit-status states that count as failing.
FAILING_CONCLUSIONS = {"failure", "cancelled", "timed_out", "action_required", "startup_failure"}


class StandInClock:
    """GitHub's clock: the machine's time plus an offset a test can move forward. Token expiry
    and scripted checks follow it; App JWTs are checked against the machine's time, which is
    the clock the client signs them with."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


class ApiError(Exception):
    """An answer GitHub gives as an error: its status, message and extra body fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        documentation_url: str = "https://docs.github.com/rest",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.body: dict[str, Any] = {
            "message": message,
            "documentation_url": documentation_url,
            **extra,
        }
        # Recent GitHub error bodies carry the status as a string as well.
        self.body["status"] = str(status)
        self.headers = headers or {}


def not_found() -> ApiError:
    return ApiError(404, "Not Found")


def validation_failed(summary: str, **error: Any) -> ApiError:
    """GitHub's 422: {"message": "Validation Failed", "errors": [...]} or a plain message."""
    if error:
        return ApiError(422, "Validation Failed", errors=[error])
    return ApiError(422, summary)


@dataclass
class App:
    id: int
    slug: str
    name: str
    client_id: str
    private_key_pem: str
    public_key_pem: str
    webhook_secret: str
    owner_login: str


@dataclass
class Installation:
    id: int
    app_id: int
    account_login: str
    repositories: set[str]  # full names; installations here are always "selected"
    permissions: dict[str, str]


@dataclass
class AccessToken:
    value: str
    kind: str  # "installation" or "pat"
    login: str  # who acts: "<app slug>[bot]" or the PAT's owner
    installation_id: int | None
    expires_at: datetime | None
    repositories: set[str] | None  # None: every repository the owner can see


@dataclass
class Protection:
    """A branch protection rule, the parts that refuse a merge or a push."""

    required_checks: list[str] = field(default_factory=list)
    required_approvals: int = 0
    strict: bool = False  # head must contain the base branch's head
    allow_pushes: bool = False


@dataclass
class Repository:
    id: int
    owner: str
    name: str
    bare: BareRepository
    default_branch: str
    created_at: datetime
    pushed_at: datetime
    private: bool = True
    protections: dict[str, Protection] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class PullRequest:
    id: int
    number: int
    repository: str
    title: str
    body: str | None
    head_ref: str
    base_ref: str
    user: str
    created_at: datetime
    updated_at: datetime
    head_sha: str
    base_sha: str
    draft: bool = False
    state: str = "open"
    closed_at: datetime | None = None
    merged_at: datetime | None = None
    merge_commit_sha: str | None = None
    merged_by: str | None = None
    approvals: int = 0

    @property
    def merged(self) -> bool:
        return self.merged_at is not None


@dataclass
class CheckRun:
    id: int
    repository: str
    head_sha: str
    name: str
    suite_id: int
    details_url: str | None
    started_at: datetime
    status: str = "in_progress"
    conclusion: str | None = None
    completed_at: datetime | None = None
    external_id: str | None = None


@dataclass
class CheckSuite:
    id: int
    repository: str
    head_sha: str
    head_branch: str | None
    created_at: datetime
    updated_at: datetime


@dataclass
class CommitStatus:
    id: int
    repository: str
    sha: str
    context: str
    state: str
    description: str | None
    target_url: str | None
    creator: str
    created_at: datetime
    updated_at: datetime


@dataclass
class DeploymentStatus:
    id: int
    deployment_id: int
    state: str
    description: str
    log_url: str
    environment_url: str
    environment: str
    creator: str
    created_at: datetime


@dataclass
class Deployment:
    id: int
    repository: str
    sha: str
    ref: str
    task: str
    environment: str
    payload: Any
    description: str | None
    creator: str
    created_at: datetime
    updated_at: datetime
    production_environment: bool
    transient_environment: bool
    statuses: list[DeploymentStatus] = field(default_factory=list)


@dataclass
class CheckScript:
    """A CI the test scripts: on each new head of a matching branch, a check run (or a commit
    status) named `name` appears pending and, `after` seconds later on the stand-in's clock,
    ends as `outcome` (None: it never ends)."""

    name: str
    outcome: str | None = "success"
    after: float = 0.0
    kind: str = "check_run"  # or "status"
    branches: str = "*"
    details_url: str | None = None


# Ids are unique across stand-ins, as GitHub's are: a client's token cache keyed by app and
# installation id must never mistake one test's installation for another's.
_ids = itertools.count(1000)


def new_id() -> int:
    return next(_ids)
