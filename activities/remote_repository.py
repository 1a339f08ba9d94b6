"""A project's repository, wherever it lives: the one module that knows.

`Project.repo_url` is a local path (used in place, as always) or a git remote: `https://` and
`http://` (a token, or a user name and password, from the project's git connector), `ssh://`
and scp-like `user@host:path` (a deploy key from that connector), `file://`, `git://`. pygit2
(libgit2) does the transport.

Of a remote, each worker keeps a bare mirror in a cache folder of its own
(Settings.repository_cache_dir), made on first use, fetched before each step that reads the
project (planning, applying, releasing, rolling back) and rebuilt when it is missing or damaged.
The activities work in the mirror exactly as in a local repository (activities.git_store), and
every ref move there is made on the remote first, by compare-and-swap (`RemotePublisher`): the
push goes ahead only while the remote ref still holds the value the move expects, as
`git push --force-with-lease` does, so a ref someone else moved is refused exactly as the local
compare-and-swap refuses it. Nothing is kept on a worker that another worker needs: any worker
on any host can serve any step. Processes of one host share a mirror under a file lock.

Credentials never travel in a string: a repository URL carrying a password is refused, the
mirror's configuration holds the URL without credentials, and every message about a remote
passes through `redact`, which also blots out each secret this process has read.
"""

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pygit2
from pygit2.enums import CredentialType, FetchPrune, RepositoryOpenFlag
from sqlmodel import col, select
from temporalio.exceptions import ApplicationError

from activities.change_engine import RepositoryError
from activities.credentials import CredentialError, CredentialStore
from activities.git_store import (
    CAS_ATTEMPTS,
    RELEASE_REFS,
    publish_through,
    reference_target,
    resolve_commit,
)
from models.db import SessionFactory
from models.projects import Connector, ConnectorKind, ConnectorStatus, Project

ZERO = "0" * 40
MIRROR_MARK = "changeflow.mirror"
# What a mirror holds of its remote, the remote's deletions included (prune): all its branches,
# and the refs keeping every deployment's release (a rollback's target may be on no branch).
MIRROR_REFSPECS = ("+refs/heads/*:refs/heads/*", f"+{RELEASE_REFS}/*:{RELEASE_REFS}/*")
# A user name for a token over https when the connector names none: GitHub, GitLab and Gitea
# all accept any user name with a token as the password.
TOKEN_USER = "x-access-token"
# Ref deletions sent in one push (each a line of about 100 bytes).
PUSH_BATCH = 500
T = TypeVar("T")


class RepositoryUrlInvalid(ValueError):
    """A repository address changeflow cannot use; the message says why (never a secret)."""


class RemoteUnavailable(Exception):
    """The remote did not answer (network, server error): worth trying again later."""


class RemoteAccessDenied(RepositoryError):
    """The remote refused the project's credentials, or wants some and the project has none."""


class RemoteUntrusted(RepositoryError):
    """The remote could not prove it is the server the project names: an ssh host key not in
    the worker user's known_hosts (or another than it lists), or a TLS certificate not valid."""


class RemoteRefused(RepositoryError):
    """The remote refused a ref update for another reason than a moved ref (a hook, a
    protected branch); its own words, redacted."""


# --- addresses and redaction -------------------------------------------------------------


class Transport(StrEnum):
    LOCAL = "local"  # a path on this machine, used in place
    FILE = "file"
    HTTP = "http"
    SSH = "ssh"
    GIT = "git"


@dataclass(frozen=True)
class RepositoryAddress:
    transport: Transport
    url: str  # as libgit2 is given it; never holds a password
    user: str | None = None  # an ssh URL's user

    @property
    def remote(self) -> bool:
        return self.transport is not Transport.LOCAL


SCHEMES = {
    "https": Transport.HTTP,
    "http": Transport.HTTP,
    "ssh": Transport.SSH,
    "git+ssh": Transport.SSH,
    "file": Transport.FILE,
    "git": Transport.GIT,
}
# git's own rule: a colon before the first slash makes `[user@]host:path` an ssh address.
SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[^@/:\s]+):(?P<path>.+)$")
URL_WITH_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
FORMS = "https://host/path, ssh://user@host/path, user@host:path, file:///path or a local path"


def parse_repository(text: str) -> RepositoryAddress:
    """The address `text` names, or RepositoryUrlInvalid saying what is wrong with it."""
    given = text.strip()
    if not given:
        raise RepositoryUrlInvalid("the repository address is empty")
    if any(ch.isspace() or ord(ch) < 32 for ch in given):
        raise RepositoryUrlInvalid(f"{redact(given)!r} holds spaces or control characters")
    if URL_WITH_SCHEME.match(given):
        return _parse_url(given)
    scp = SCP_LIKE.match(given)
    if scp is not None and "/" not in given.split(":", 1)[0]:
        return RepositoryAddress(Transport.SSH, given, scp["user"])
    return RepositoryAddress(Transport.LOCAL, given)


def _parse_url(given: str) -> RepositoryAddress:
    try:
        parts = urlsplit(given)
        port = parts.port  # a port that is no number raises here
    except ValueError:
        raise RepositoryUrlInvalid(f"{redact(given)!r} is not a valid URL") from None
    transport = SCHEMES.get(parts.scheme.lower())
    if transport is None:
        raise RepositoryUrlInvalid(
            f"{parts.scheme}:// is not a git transport changeflow speaks; use {FORMS}"
        )
    if parts.password is not None:
        raise RepositoryUrlInvalid(
            f"{redact(given)!r} carries a password: credentials belong in the project's git "
            "connector (encrypted), never in its URL"
        )
    if parts.query or parts.fragment:
        raise RepositoryUrlInvalid(f"{redact(given)!r}: a repository URL has no ? or # part")
    path = parts.path.strip("/")
    if transport is Transport.FILE:
        if parts.hostname not in (None, "", "localhost") or not path:
            raise RepositoryUrlInvalid(f"{given!r}: a file URL is file:///absolute/path")
        return RepositoryAddress(transport, given)
    if not parts.hostname:
        raise RepositoryUrlInvalid(f"{redact(given)!r} names no host")
    if not path:
        raise RepositoryUrlInvalid(f"{redact(given)!r} names no repository on {parts.hostname}")
    if transport is Transport.HTTP and parts.username:
        # A user name alone is harmless, but the connector says who the project is there.
        raise RepositoryUrlInvalid(
            f"{redact(given)!r} names a user: credentials belong in the project's git connector"
        )
    del port
    user = parts.username if transport is Transport.SSH else None
    return RepositoryAddress(transport, given, user)


# Secrets this process has read for a remote: blotted out wherever they appear.
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*@)")


def _remember_secrets(values: dict[str, str]) -> None:
    with _secrets_lock:
        _secrets.update(v for v in values.values() if len(v) >= 6)


def redact(text: str) -> str:
    """`text` without credentials: a URL's user information and every secret this process has
    read for a remote. Every message about a remote goes through here before anyone sees it."""
    clean = USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        clean = clean.replace(secret, "***")
    return clean


# --- access to one remote ------------------------------------------------------------------


@dataclass
class RemoteAccess:
    """A remote and the credentials of the project's git connector (fields of CREDENTIAL_SETS
    in activities.connectors); libgit2's callbacks for one operation are made from it."""

    address: RepositoryAddress
    secrets: dict[str, str] = field(default_factory=dict, repr=False)

    def callbacks(self, expected: dict[str, str | None] | None = None) -> "Callbacks":
        return Callbacks(self, expected or {})

    def credentials(self, username: str | None, allowed: CredentialType) -> object:
        s = self.secrets
        if allowed & CredentialType.SSH_MEMORY and s.get("ssh_private_key"):
            return pygit2.KeypairFromMemory(
                username or self.address.user or "git",
                s.get("ssh_public_key") or None,  # libssh2 derives it from the private key
                s["ssh_private_key"],
                s.get("ssh_passphrase", ""),
            )
        if allowed & CredentialType.USERNAME:
            return pygit2.Username(username or self.address.user or "git")
        if allowed & CredentialType.USERPASS_PLAINTEXT:
            if s.get("token"):
                return pygit2.UserPass(s.get("username") or TOKEN_USER, s["token"])
            if s.get("username") and s.get("password"):
                return pygit2.UserPass(s["username"], s["password"])
        raise RemoteAccessDenied(
            f"{redact(self.address.url)} asks for credentials the project has none of: add a git "
            "connector to the project (a token for https, a deploy key for ssh)"
        )


class LeaseBroken(Exception):
    """The remote ref no longer holds what a compare-and-swap push expects."""


class Callbacks(pygit2.RemoteCallbacks):
    def __init__(self, access: RemoteAccess, expected: dict[str, str | None]) -> None:
        super().__init__()
        self._access = access
        self._expected = expected
        self._asked = 0
        self.refused: dict[str, str] = {}

    def credentials(  # type: ignore[override]
        self, url: str, username_from_url: str | None, allowed_types: CredentialType
    ) -> object:
        self._asked += 1
        if self._asked > 1:  # libgit2 asks again after a refusal, for ever
            raise RemoteAccessDenied(
                f"{redact(self._access.address.url)} refused the project's git credentials"
            )
        return self._access.credentials(username_from_url, allowed_types)

    def certificate_check(self, certificate: None, valid: bool, host: bytes) -> bool:
        """TLS as libgit2 verified it; an ssh host key as libgit2 found it in the worker user's
        `~/.ssh/known_hosts` (pygit2's default would accept any ssh host key). Refused before
        any credential is sent."""
        if not valid:
            name = host.decode(errors="replace")
            if self._access.address.transport is Transport.SSH:
                raise RemoteUntrusted(
                    f"the ssh host key of {name} is not the one this worker's known_hosts lists "
                    f"for it (or none is listed): add the server's host key to ~/.ssh/known_hosts "
                    f"of the worker's user ({redact(self._access.address.url)})"
                )
            raise RemoteUntrusted(f"the TLS certificate of {name} is not valid")
        return True

    def push_negotiation(self, updates: list[pygit2.remotes.PushUpdate]) -> None:
        """Before anything is sent: each ref must still hold what the move expects. The server
        then moves it only from that value (receive-pack checks the old value under its lock)."""
        for update in updates:
            expected = self._expected.get(update.dst_refname, ZERO) or ZERO
            if str(update.src) != expected:
                raise LeaseBroken(f"{update.dst_refname} is at {str(update.src)[:12]} there")

    def push_update_reference(self, refname: str, message: str | None) -> None:
        # pygit2 raises nothing when the server refuses a ref: this is the only verdict.
        if message is not None:
            self.refused[refname] = redact(message)


def _transport_error(access: RemoteAccess, doing: str, exc: Exception) -> Exception:
    message = redact(f"{doing} {access.address.url} failed: {exc}")
    if isinstance(exc, pygit2.GitError) and "authentication" in str(exc).lower():
        return RemoteAccessDenied(message)
    return RemoteUnavailable(message)


# --- the mirror ----------------------------------------------------------------------------


@contextlib.contextmanager
def host_lock(path: Path) -> Iterator[None]:
    """Serialises the writers of one mirror on this host: processes and threads alike (each
    open file description locks for itself)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class RemotePublisher:
    """Moves a mirror's refs on its remote first, by compare-and-swap, then in the mirror."""

    def __init__(self, access: RemoteAccess, lock: Path) -> None:
        self.access = access
        self.lock = lock

    def swap(self, r: pygit2.Repository, ref: str, new: str | None, old: str | None) -> bool:
        with host_lock(self.lock):
            if reference_target(r, ref) != old:
                return False
            callbacks = self.access.callbacks({ref: old})
            spec = f"+{new}:{ref}" if new is not None else f":{ref}"
            try:
                r.remotes["origin"].push([spec], callbacks=callbacks)
            except LeaseBroken:
                _fetch(r, self.access)  # the mirror learns where the ref went
                return False
            except RemoteAccessDenied:
                raise
            except pygit2.GitError as exc:
                raise _transport_error(self.access, f"pushing {ref} to", exc) from None
            if callbacks.refused:
                _fetch(r, self.access)
                if reference_target(r, ref) != old:
                    return False  # moved between the remote's answer and its update
                raise RemoteRefused(
                    f"{redact(self.access.address.url)} refused {ref}: "
                    + "; ".join(callbacks.refused.values())
                )
            # libgit2 updated the mirror's ref along the refspec; made sure of here.
            if new is None:
                with contextlib.suppress(KeyError):
                    r.references.delete(ref)
            else:
                r.references.create(ref, new, force=True)
            return True

    def delete(self, r: pygit2.Repository, expected: Mapping[str, str]) -> set[str]:
        """Delete refs on the remote, then in the mirror, each only while it still holds its
        expected commit, in a push for up to PUSH_BATCH of them: each carries its lease, checked
        before anything is sent and again by receive-pack under its lock. A ref that moved or is
        gone there already is left out after a fetch tells the mirror; the refs deleted."""
        deleted: set[str] = set()
        refused: dict[str, str] = {}
        with host_lock(self.lock):
            for _ in range(CAS_ATTEMPTS):
                pending = [
                    (ref, old)
                    for ref, old in expected.items()
                    if ref not in deleted and ref not in refused and reference_target(r, ref) == old
                ]
                if not pending:
                    break
                if all(
                    self._delete_batch(r, dict(batch), deleted, refused)
                    for batch in _batches(pending, PUSH_BATCH)
                ):
                    break
        if refused:
            raise RemoteRefused(
                f"{redact(self.access.address.url)} refused to delete "
                + "; ".join(f"{ref}: {why}" for ref, why in sorted(refused.items()))
            )
        return deleted

    def _delete_batch(
        self,
        r: pygit2.Repository,
        batch: dict[str, str],
        deleted: set[str],
        refused: dict[str, str],
    ) -> bool:
        """One push deleting `batch`; False when a lease broke (nothing was sent)."""
        callbacks = self.access.callbacks(dict(batch))
        try:
            r.remotes["origin"].push([f":{ref}" for ref in batch], callbacks=callbacks)
        except LeaseBroken:
            _fetch(r, self.access)  # the mirror learns which moved or went
            return False
        except RemoteAccessDenied:
            raise
        except pygit2.GitError as exc:
            raise _transport_error(self.access, "deleting refs on", exc) from None
        for ref in batch:
            if ref in callbacks.refused:
                refused[ref] = callbacks.refused[ref]
                continue
            with contextlib.suppress(KeyError):  # libgit2 may have deleted it along the refspec
                r.references.delete(ref)
            deleted.add(ref)
        if callbacks.refused:
            _fetch(r, self.access)
        return True


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _fetch(r: pygit2.Repository, access: RemoteAccess) -> None:
    try:
        r.remotes["origin"].fetch(callbacks=access.callbacks(), prune=FetchPrune.PRUNE)
    except RemoteAccessDenied:
        raise
    except pygit2.GitError as exc:
        raise _transport_error(access, "fetching", exc) from None


def _intact(r: pygit2.Repository) -> bool:
    """Whether every branch of the mirror reaches a readable commit (a damaged mirror fetches
    without complaint: it believes it has what its refs name)."""
    try:
        for name in r.references:
            if name.startswith("refs/heads/"):
                target = r.references[name].resolve().target
                if not isinstance(r.get(target), pygit2.Commit):
                    return False
        return True
    except (KeyError, ValueError, pygit2.GitError):
        return False


def _open_mirror(path: Path, access: RemoteAccess) -> pygit2.Repository | None:
    """The mirror at `path` when it is one of `access`'s remote; None when missing or damaged."""
    if not path.is_dir():
        return None
    try:
        r = pygit2.Repository(str(path), RepositoryOpenFlag.NO_SEARCH)
        if not r.is_bare or r.config.get_bool(MIRROR_MARK) is not True:
            return None
        origin = r.remotes["origin"]
        if origin.url != access.address.url:
            return None
        for refspec in MIRROR_REFSPECS:  # a mirror made before the release refs learns them
            if refspec not in origin.fetch_refspecs:
                r.remotes.add_fetch("origin", refspec)
    except (KeyError, ValueError, pygit2.GitError):
        return None
    return r


def _build_mirror(path: Path, access: RemoteAccess) -> pygit2.Repository:
    """A fresh mirror in a folder beside `path`, moved into place once complete: a mirror is
    either whole or absent, whenever its builder dies. Called under the mirror's host lock."""
    for leftover in path.parent.glob(f".{path.name}.*"):  # of a builder killed half-way
        shutil.rmtree(leftover, ignore_errors=True)
    fresh = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.new")
    try:
        r = pygit2.init_repository(str(fresh), bare=True)
        r.remotes.create("origin", access.address.url, MIRROR_REFSPECS[0])
        for refspec in MIRROR_REFSPECS[1:]:
            r.remotes.add_fetch("origin", refspec)
        r.config[MIRROR_MARK] = True
        _fetch(r, access)
        if path.exists():
            stale = fresh.with_suffix(".old")
            path.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        fresh.rename(path)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return pygit2.Repository(str(path), RepositoryOpenFlag.NO_SEARCH)


class Repositories:
    """Where the activities find a project's repository to work in: the path itself, or this
    worker's mirror of the remote, fetched."""

    def __init__(
        self,
        cache_dir: Path,
        sessions: SessionFactory | None = None,
        store: CredentialStore | None = None,
        github_credentials: Callable[[uuid.UUID], Awaitable[dict[str, str]]] | None = None,
    ) -> None:
        """`github_credentials`: git's credentials from a project's `github` connector, for a
        project without a `git` connector (GitHubActivities.git_credentials)."""
        self.cache_dir = Path(cache_dir).resolve()
        self._sessions = sessions
        self._store = store
        self._github_credentials = github_credentials
        # When each mirror's last fetch began: a step that asks while one runs waits for it
        # and goes on with what it fetched (the remote as of after the step asked).
        self._fetched: dict[Path, float] = {}

    def mirror_path(self, project: Project, address: RepositoryAddress) -> Path:
        digest = hashlib.sha256(address.url.encode()).hexdigest()[:12]
        return self.cache_dir / f"{project.id}-{digest}.git"

    async def local(self, project: Project, *, fetch: bool = True) -> Path:
        """The repository to work in for `project`: a local path as it is; for a remote, the
        mirror (made or rebuilt when needed), fetched unless `fetch` is False."""
        try:
            address = parse_repository(project.repo_url)
        except RepositoryUrlInvalid as exc:
            raise RepositoryError(str(exc)) from None
        if not address.remote:
            return Path(project.repo_url)
        access = RemoteAccess(address, await self._secrets(project))
        mirror = self.mirror_path(project, address)
        asked = time.monotonic()
        await asyncio.to_thread(self._ready, mirror, access, fetch, asked)
        return mirror

    async def holding(self, project: Project, commit: str) -> Path:
        """The repository to work in, fetched only when it lacks `commit` (a step after the
        one that made or fetched it, perhaps on another worker)."""
        repo = await self.local(project, fetch=False)
        if await resolve_commit(repo, commit) is None:
            repo = await self.local(project)
        return repo

    def _ready(self, mirror: Path, access: RemoteAccess, fetch: bool, asked: float) -> None:
        lock = mirror.with_suffix(".lock")
        publish_through(mirror, RemotePublisher(access, lock))
        with host_lock(lock):
            began = time.monotonic()
            r = _open_mirror(mirror, access)
            if r is not None:
                if not fetch or self._fetched.get(mirror, -1.0) >= asked:
                    return
                try:
                    _fetch(r, access)
                    if _intact(r):
                        self._fetched[mirror] = began
                        return
                except RemoteAccessDenied:
                    raise
                except RemoteUnavailable:
                    pass  # perhaps the mirror's fault: a fresh one settles which
            _build_mirror(mirror, access)
            self._fetched[mirror] = began

    async def _secrets(self, project: Project) -> dict[str, str]:
        """The credentials of the project's git connector: the newest active one, else the
        newest one not disabled (untested yet, or failing: its error will say why)."""
        if self._sessions is None:
            return {}
        async with self._sessions() as session:
            connectors = (
                await session.exec(
                    select(Connector)
                    .where(
                        Connector.project_id == project.id,
                        col(Connector.kind).in_((ConnectorKind.GIT, ConnectorKind.GITHUB)),
                        Connector.status != ConnectorStatus.DISABLED,
                    )
                    .order_by(col(Connector.created_at).desc())
                )
            ).all()
        github = next((c for c in connectors if c.kind is ConnectorKind.GITHUB), None)
        connectors = [c for c in connectors if c.kind is ConnectorKind.GIT]
        active = [c for c in connectors if c.status is ConnectorStatus.ACTIVE]
        connector = next(iter(active or connectors), None)
        if connector is None and github is not None and self._github_credentials is not None:
            # A GitHub project with no git connector: its App's installation token.
            try:
                secrets = await self._github_credentials(github.id)
            except ApplicationError as exc:
                if not exc.non_retryable:
                    raise RemoteUnavailable(str(exc)) from None
                raise RemoteAccessDenied(str(exc)) from None
            _remember_secrets(secrets)
            return secrets
        if connector is None:
            return {}
        if self._store is None:
            raise RemoteAccessDenied("this worker has no credential store to read git credentials")
        try:
            secrets = await self._store.read(connector)
        except CredentialError as exc:
            raise RemoteAccessDenied(str(exc)) from None
        _remember_secrets(secrets)
        return secrets


async def remote_branches(repo_url: str, secrets: dict[str, str]) -> list[str]:
    """The remote's branches, listed with `secrets` (a git connector's test)."""
    address = parse_repository(repo_url)
    if not address.remote:
        raise RepositoryUrlInvalid(f"{repo_url!r} is a local path: it needs no credentials")
    _remember_secrets(secrets)
    access = RemoteAccess(address, secrets)

    def listing() -> list[str]:
        with tempfile.TemporaryDirectory(prefix="changeflow-probe-") as scratch:
            remote = pygit2.init_repository(scratch, bare=True).remotes.create_anonymous(
                address.url
            )
            try:
                heads = remote.list_heads(callbacks=access.callbacks())
            except RemoteAccessDenied:
                raise
            except pygit2.GitError as exc:
                raise _transport_error(access, "listing", exc) from None
        names = [head.name or "" for head in heads]
        return sorted(name for name in names if name.startswith("refs/heads/"))

    return await asyncio.to_thread(listing)


def default_repositories(sessions: SessionFactory | None = None) -> Repositories:
    """For activities built without a worker's settings (tests, tools): mirrors under the
    system's temporary folder."""
    return Repositories(Path(tempfile.gettempdir()) / "changeflow-repositories", sessions)
