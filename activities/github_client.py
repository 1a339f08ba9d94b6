"""The GitHub client of a `github` connector: githubkit (async) with the connector's decrypted
credentials, every answer that is not a success turned into one of three things:

- `GitHubRateLimited` (retryable, `retry_after`): a primary limit (`x-ratelimit-remaining: 0`,
  wait until `x-ratelimit-reset`) or a secondary one (403/429 with `retry-after`). githubkit runs
  with `auto_retry=False`: a sleep inside an activity would hold a worker slot and hide the
  wait from the history; `activity_error` makes it an ApplicationError whose
  `next_retry_delay` is GitHub's wait, so Temporal retries and the lifecycle never fails on it.
- `GitHubUnavailable` (retryable): GitHub did not answer (5xx, timeouts, refused connections).
- `GitHubError` (typed, non-retryable, `error_type`): a refusal retrying cannot mend.

Credentials: a GitHub App (app id, private key, installation id) or a fine-grained personal
access token. An App's installation token is bought with an RS256 JWT (githubkit's
AppAuthStrategy signs it), cached per process until REFRESH_MARGIN before its one-hour expiry,
bought once by one caller while the others wait (a lock per installation), and dropped on a
401 (revoked or expired early): the call is made again once with a new token. The token handed
to git is first shown to GitHub that way (`git_token`): git cannot ask again.

Content creation (POST, PATCH, PUT, DELETE) is serialised per installation (or per token) and
spaced by `write_spacing`, as GitHub's best practices ask ("make requests serially", "at least
one second between" content-creating requests): the secondary limit is then rare, not routine.

No message of this module holds a token, a key or a URL with credentials: errors name the
method, the API path and GitHub's own `message` only.
"""

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from githubkit import AppAuthStrategy, GitHub, Response, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import (
    PrimaryRateLimitExceeded,
    RateLimitExceeded,
    RequestError,
    RequestFailed,
    SecondaryRateLimitExceeded,
)
from temporalio.exceptions import ApplicationError

from activities.github_checks import verification_problems
from models.base import utcnow
from models.db import SessionFactory
from workflows.contracts.errors import ErrorType, refused
from workflows.contracts.github import GITHUB_RATE_LIMITED, GITHUB_UNAVAILABLE

log = structlog.get_logger(__name__)

GITHUB_API_URL = "https://api.github.com"
# An installation token this close to its expiry is bought again before a call: no sequence of
# calls starts with a token that lapses half-way.
REFRESH_MARGIN = timedelta(minutes=5)
# GitHub: "wait at least one second between each request" that creates content.
WRITE_SPACING = timedelta(seconds=1)
# When GitHub names no wait (a 5xx): Temporal's own backoff decides.
HTTP_TIMEOUT_S = 30.0
# The credential fields of each way in; any one complete set will do.
APP_FIELDS = ("app_id", "installation_id", "private_key")
TOKEN_FIELDS = ("token",)
REPOSITORY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}")

T = TypeVar("T")


class GitHubError(Exception):
    """A refusal retrying cannot mend; `error_type` names the rule, `status` GitHub's answer."""

    def __init__(
        self, message: str, *, error_type: ErrorType = ErrorType.GITHUB_REFUSED, status: int = 0
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status = status


class GitHubUnavailable(Exception):
    """GitHub did not answer, or asked to wait: retry, after `retry_after` when it said."""

    error_type = GITHUB_UNAVAILABLE

    def __init__(self, message: str, retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GitHubRateLimited(GitHubUnavailable):
    error_type = GITHUB_RATE_LIMITED


def activity_error(err: GitHubError | GitHubUnavailable) -> ApplicationError:
    """The ApplicationError an activity raises for `err`: typed and final for a refusal,
    retryable with GitHub's wait as `next_retry_delay` for a limit or an outage."""
    if isinstance(err, GitHubError):
        return refused(err.error_type, str(err))
    return ApplicationError(
        str(err), type=err.error_type, non_retryable=False, next_retry_delay=err.retry_after
    )


@dataclass(frozen=True)
class GitHubAccess:
    """How to reach one repository. Secrets are excluded from repr (and so from any log)."""

    api_url: str
    owner: str
    repo: str
    app_id: str | None = None
    installation_id: int | None = None
    private_key: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"

    @property
    def is_app(self) -> bool:
        return self.installation_id is not None

    @property
    def installation_key(self) -> str:
        """Whose rate limits and write turn this access shares: the installation's, or (for a
        personal token) the token, known here by a digest, never the token itself."""
        if self.is_app:
            return f"{self.api_url}|installation:{self.installation_id}"
        digest = hashlib.sha256((self.token or "").encode()).hexdigest()[:16]
        return f"{self.api_url}|token:{digest}"

    @property
    def token_key(self) -> str:
        """Which cached installation token this access may use: the same installation reached
        with the same App key (a connector with a wrong key never borrows a good one's)."""
        digest = hashlib.sha256(f"{self.app_id}|{self.private_key}".encode()).hexdigest()[:16]
        return f"{self.installation_key}|{digest}"

    @classmethod
    def from_connector(cls, config: dict[str, Any], secrets: dict[str, str]) -> "GitHubAccess":
        """From a connector's config (`repository`, `api_url`) and decrypted credentials;
        check_connector has refused anything else at creation."""
        owner, repo = str(config["repository"]).split("/", 1)
        api_url = str(config.get("api_url") or GITHUB_API_URL).rstrip("/")
        if all(secrets.get(k) for k in APP_FIELDS):
            return cls(
                api_url=api_url,
                owner=owner,
                repo=repo,
                app_id=secrets["app_id"],
                installation_id=int(secrets["installation_id"]),
                private_key=secrets["private_key"],
            )
        return cls(api_url=api_url, owner=owner, repo=repo, token=secrets.get("token", ""))


def check_connector(config: dict[str, Any], credentials: dict[str, str]) -> list[str]:
    """What is wrong with a github connector's settings, as sentences (empty: nothing)."""
    problems = verification_problems(config)
    repository = str(config.get("repository", ""))
    if not REPOSITORY_NAME.fullmatch(repository):
        problems.append(f"repository must be owner/name, not {repository!r}")
    api_url = str(config.get("api_url") or GITHUB_API_URL)
    if not api_url.startswith(("https://", "http://")) or "@" in api_url:
        problems.append("api_url must be an http(s) URL without credentials")
    if all(credentials.get(k) for k in APP_FIELDS):
        for name in ("app_id", "installation_id"):
            if not credentials[name].strip().isdigit():
                problems.append(f"{name} must be a number")
        if "PRIVATE KEY-----" not in credentials["private_key"]:
            problems.append("private_key must be the App's PEM private key")
        else:
            problems.extend(_key_problems(credentials["private_key"]))
    elif any(credentials.get(k) for k in APP_FIELDS):
        missing = [k for k in APP_FIELDS if not credentials.get(k)]
        problems.append(f"a GitHub App needs {', '.join(missing)} too")
    elif credentials.get("token"):
        if any(c.isspace() for c in credentials["token"]):
            problems.append("token must be one word (a fine-grained personal access token)")
    else:
        problems.append(
            "a github connector needs app_id, installation_id and private_key, or token"
        )
    return problems


def _key_problems(pem: str) -> list[str]:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return ["private_key does not parse as an unencrypted PEM private key"]
    if not isinstance(key, rsa.RSAPrivateKey):
        return ["private_key must be an RSA key (GitHub Apps sign with RS256)"]
    return []


@dataclass
class _Cached:
    token: str
    expires_at: datetime


class InstallationTokens:
    """Installation tokens per process: cached until REFRESH_MARGIN before expiry, one purchase
    at a time per installation, dropped when GitHub refuses them."""

    def __init__(self, *, refresh_margin: timedelta = REFRESH_MARGIN) -> None:
        self._refresh_margin = refresh_margin
        self._cached: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.purchases = 0  # how many tokens were bought (a test reads it)

    async def token(self, access: GitHubAccess) -> str:
        if not access.is_app:
            return access.token or ""
        key = access.token_key
        cached = self._cached.get(key)
        if cached is not None and cached.expires_at - utcnow() > self._refresh_margin:
            return cached.token
        async with self._locks.setdefault(key, asyncio.Lock()):
            # Another caller may have bought one while this one waited.
            cached = self._cached.get(key)
            if cached is not None and cached.expires_at - utcnow() > self._refresh_margin:
                return cached.token
            self._cached[key] = await self._buy(access)
            self.purchases += 1
            return self._cached[key].token

    def drop(self, access: GitHubAccess, token: str) -> None:
        """Forget `token` (GitHub refused it); a newer token another caller bought stays."""
        cached = self._cached.get(access.token_key)
        if cached is not None and cached.token == token:
            del self._cached[access.token_key]

    async def _buy(self, access: GitHubAccess) -> _Cached:
        assert access.app_id is not None and access.installation_id is not None
        assert access.private_key is not None
        app = GitHub(
            AppAuthStrategy(access.app_id, access.private_key),
            base_url=access.api_url,
            auto_retry=False,
            http_cache=False,
            timeout=HTTP_TIMEOUT_S,
            # A JWT of its own: githubkit's shared cache keys JWTs by app id alone, so a key
            # being tested (or rotated) would borrow the JWT signed with another key.
            cache_strategy=MemCacheStrategy(),
        )
        what = f"POST /app/installations/{access.installation_id}/access_tokens"
        try:
            answer = await app.rest.apps.async_create_installation_access_token(
                access.installation_id
            )
        except RequestError as err:
            raise _translated(err, what, credentials="the App's JWT") from None
        issued = answer.parsed_data
        # githubkit's model keeps it as GitHub's ISO 8601 text ("2026-12-07T19:00:00Z").
        expires_at = datetime.fromisoformat(str(issued.expires_at).replace("Z", "+00:00"))
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        log.info(
            "github_installation_token_bought",
            installation_id=access.installation_id,
            expires_at=expires_at.isoformat(),
        )
        return _Cached(issued.token, expires_at)


class WriteTurns:
    """Content-creating requests one at a time per installation, `spacing` apart. In one
    process by a lock; across the processes of a fleet too once `across_processes` gave it
    the database: a PostgreSQL advisory lock per installation, held for the request (released
    by the server if the process dies)."""

    def __init__(self, spacing: timedelta = WRITE_SPACING) -> None:
        self._spacing = spacing.total_seconds()
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, float] = {}
        self._sessions: SessionFactory | None = None

    def across_processes(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        async with self._locks.setdefault(key, asyncio.Lock()), self._fleet_turn(key):
            wait = self._last.get(key, float("-inf")) + self._spacing - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._last[key] = time.monotonic()

    @contextlib.asynccontextmanager
    async def _fleet_turn(self, key: str) -> AsyncIterator[None]:
        if self._sessions is None:
            yield
            return
        # A transaction's lock: its end (commit, rollback, a lost connection) releases it.
        lock = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
        async with self._sessions() as session, session.begin():
            connection = await session.connection()
            await connection.execute(lock, {"key": f"changeflow/github-writes|{key}"})
            yield


class GitHubClients:
    """What a worker process shares between its GitHub calls: the token cache and the write
    turns. One per process (workers/registry.py builds it with the Connections)."""

    def __init__(
        self,
        *,
        refresh_margin: timedelta = REFRESH_MARGIN,
        write_spacing: timedelta = WRITE_SPACING,
    ) -> None:
        self.tokens = InstallationTokens(refresh_margin=refresh_margin)
        self.writes = WriteTurns(write_spacing)

    def repository(self, access: GitHubAccess) -> "GitHubRepository":
        return GitHubRepository(access, self)


_process_clients: GitHubClients | None = None


def process_clients() -> GitHubClients:
    """The process's one GitHubClients: every connector's calls share its cache and turns."""
    global _process_clients
    if _process_clients is None:
        _process_clients = GitHubClients()
    return _process_clients


Operation = Callable[[GitHub[Any]], Awaitable[Response[T]]]


class GitHubRepository:
    """Calls on one repository. Use `async with` around a sequence of calls: they share one
    HTTP connection (githubkit opens a client per call outside it)."""

    def __init__(self, access: GitHubAccess, clients: GitHubClients) -> None:
        self.access = access
        self._clients = clients
        self._github: GitHub[Any] | None = None
        self._github_token: str | None = None
        self._open = False

    @property
    def owner(self) -> str:
        return self.access.owner

    async def git_token(self) -> str:
        """The token git sends as the password over https (user `x-access-token`): the
        installation's, from the cache, or the personal token. An installation token is first
        shown to GitHub (the repository read, which replaces a refused token, `call`): GitHub
        may end one before its `expires_at` (revoked, or the worker's clock behind), and git,
        refused, fails the step instead of asking for another."""
        if self.access.is_app:
            owner, name = self.access.owner, self.access.repo
            await self.call(
                f"GET /repos/{owner}/{name}", lambda gh: gh.rest.repos.async_get(owner, name)
            )
        try:
            return await self._clients.tokens.token(self.access)
        except RequestFailed as err:
            raise _translated(err, "POST /app/installations/{id}/access_tokens") from None
        except RequestError as err:
            raise _translated(err, "POST /app/installations/{id}/access_tokens") from None

    @property
    def name(self) -> str:
        return self.access.repo

    async def __aenter__(self) -> "GitHubRepository":
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        await self._close()

    async def _close(self) -> None:
        if self._github is not None:
            github, self._github, self._github_token = self._github, None, None
            with contextlib.suppress(Exception):
                await github.__aexit__()

    async def _client(self, token: str) -> GitHub[Any]:
        if self._github is not None and self._github_token == token:
            return self._github
        await self._close()
        github: GitHub[Any] = GitHub(
            TokenAuthStrategy(token),
            base_url=self.access.api_url,
            auto_retry=False,
            http_cache=False,
            timeout=HTTP_TIMEOUT_S,
        )
        if self._open:
            await github.__aenter__()
        self._github, self._github_token = github, token
        return github

    async def call(
        self, what: str, operation: Operation[T], *, writes: bool = False
    ) -> Response[T]:
        """Run `operation` with a good token; `what` ("METHOD /path") names it in errors. A 401
        drops the token and asks once more with a new one (an App only: a personal token
        refused is refused)."""
        for attempt in (1, 2):
            token = await self._clients.tokens.token(self.access)
            github = await self._client(token)
            try:
                if writes:
                    async with self._clients.writes.turn(self.access.installation_key):
                        return await operation(github)
                return await operation(github)
            except RequestFailed as err:
                if (
                    err.response.status_code == 401
                    and attempt == 1
                    and self.access.is_app
                    and not isinstance(err, RateLimitExceeded)
                ):
                    log.info("github_token_refused_buying_another", what=what)
                    self._clients.tokens.drop(self.access, token)
                    continue
                raise _translated(err, what) from None
            except RequestError as err:
                raise _translated(err, what) from None
        raise AssertionError("unreachable")  # pragma: no cover


def github_message(err: RequestFailed) -> str:
    """GitHub's own `message` of a refusal (its JSON body), else the HTTP reason."""
    try:
        body = err.response.raw_response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        message = str(body["message"])
        details = [
            str(e.get("message"))
            for e in body.get("errors") or []
            if isinstance(e, dict) and e.get("message")
        ]
        return message + (f" ({'; '.join(details)})" if details else "")
    return err.response.raw_response.reason_phrase or "no message"


def _translated(
    err: BaseException, what: str, *, credentials: str = "the connector's credentials"
) -> GitHubError | GitHubUnavailable:
    if isinstance(err, RateLimitExceeded):
        kind = "secondary" if isinstance(err, SecondaryRateLimitExceeded) else "primary"
        assert isinstance(err, SecondaryRateLimitExceeded | PrimaryRateLimitExceeded)
        return GitHubRateLimited(
            f"{what}: GitHub's {kind} rate limit; retry in {err.retry_after.total_seconds():.0f} s",
            retry_after=max(err.retry_after, timedelta(seconds=1)),
        )
    if isinstance(err, RequestFailed):
        status = err.response.status_code
        message = f"{what}: GitHub answered {status}: {github_message(err)}"
        if status >= 500:
            return GitHubUnavailable(message)
        if status == 401:
            return GitHubError(
                f"{message} ({credentials} were refused)",
                error_type=ErrorType.INVALID_CREDENTIALS,
                status=status,
            )
        return GitHubError(message, status=status)
    cause = err.exc if isinstance(err, RequestError) else err
    return GitHubUnavailable(f"{what}: GitHub did not answer ({type(cause).__name__})")
