"""What the GitHub stand-in remembers, and GitHub's rules over it (FACTS.md says where each rule
comes from). No HTTP here: rest.py and git_http.py translate requests into these calls, tests
call them directly to script the world (a check that goes red, a person who pushes, a protection
rule, a token that expires).

One lock guards everything: the REST app runs handlers in threads and the tests change state
from theirs.
"""

import fnmatch
import secrets
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scripts.github_stand_in.bare_repo import ZERO_SHA, BareRepository, GitRefusal
from scripts.github_stand_in.rate_limits import RateLimits
from scripts.github_stand_in.records import (
    FAILING_CONCLUSIONS,
    INSTALLATION_TOKEN_LIFETIME,
    AccessToken,
    ApiError,
    App,
    CheckRun,
    CheckScript,
    CheckSuite,
    CommitStatus,
    Deployment,
    DeploymentStatus,
    Installation,
    Protection,
    PullRequest,
    Repository,
    StandInClock,
    new_id,
    not_found,
    validation_failed,
)


class Gate:
    """A point where a test holds GitHub's work: once `armed`, the call that reaches it (on the
    server's thread pool) sets `reached` and waits until the test sets `opened`."""

    def __init__(self) -> None:
        self.armed = False
        self.reached = threading.Event()
        self.opened = threading.Event()

    def pass_through(self, timeout: float = 120.0) -> None:
        if self.armed:
            self.reached.set()
            self.opened.wait(timeout)


class GitHubState:
    """Apps, installations, tokens, repositories and all that lives on them."""

    def __init__(self, root: Path, clock: StandInClock | None = None) -> None:
        self.root = root
        self.clock = clock or StandInClock()
        self.lock = threading.RLock()
        self.apps: dict[int, App] = {}
        self.installations: dict[int, Installation] = {}
        self.tokens: dict[str, AccessToken] = {}
        self.repositories: dict[str, Repository] = {}
        self.pulls: dict[tuple[str, int], PullRequest] = {}
        self.check_runs: list[CheckRun] = []
        self.check_suites: dict[tuple[str, str], CheckSuite] = {}
        self.statuses: list[CommitStatus] = []
        self.deployments: dict[int, Deployment] = {}
        self.check_scripts: dict[str, list[CheckScript]] = {}
        self.limits = RateLimits(self.clock, self.lock)
        # Knobs: a `PUT .../pulls/{n}/merge` held before it merges; a push held before it
        # changes `push_gate_ref` (a full ref name).
        self.merge_gate = Gate()
        self.push_gate = Gate()
        self.push_gate_ref = ""
        # Knob: REST calls (method, path suffix) after whose answer every installation token
        # expires, each once (expire_tokens_after); and at each expiry, how many installation
        # tokens had been issued (a test compares it with the tokens issued since).
        self._expiring_after: list[tuple[str, str]] = []
        self.expiries: list[int] = []
        self._due: list[tuple[datetime, Callable[[], object]]] = []
        # Set by the server: where events go (the webhook sender).
        self.on_event: Callable[[str, str, dict[str, Any]], None] = lambda *_: None

    # -- identities -----------------------------------------------------------------------

    def create_app(self, *, slug: str = "changeflow", owner: str = "acme") -> App:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        app = App(
            id=new_id(),
            slug=slug,
            name=slug.capitalize(),
            client_id=f"Iv1.{secrets.token_hex(8)}",
            private_key_pem=private_pem,
            public_key_pem=public_pem,
            webhook_secret=secrets.token_hex(20),
            owner_login=owner,
        )
        self.apps[app.id] = app
        return app

    def install(self, app: App, account: str, repositories: list[str]) -> Installation:
        installation = Installation(
            id=new_id(),
            app_id=app.id,
            account_login=account,
            repositories=set(repositories),
            permissions={
                "contents": "write",
                "pull_requests": "write",
                "deployments": "write",
                "checks": "read",
                "statuses": "read",
                "metadata": "read",
            },
        )
        self.installations[installation.id] = installation
        return installation

    def issue_installation_token(self, installation_id: int) -> AccessToken:
        with self.lock:
            installation = self.installations.get(installation_id)
            if installation is None:
                raise not_found()
            app = self.apps[installation.app_id]
            token = AccessToken(
                value=f"ghs_{secrets.token_urlsafe(27)}",
                kind="installation",
                login=f"{app.slug}[bot]",
                installation_id=installation.id,
                expires_at=self.clock.now() + INSTALLATION_TOKEN_LIFETIME,
                repositories=set(installation.repositories),
            )
            self.tokens[token.value] = token
            return token

    def create_personal_token(
        self, login: str, repositories: list[str] | None = None
    ) -> AccessToken:
        token = AccessToken(
            value=f"github_pat_{secrets.token_urlsafe(60)}",
            kind="pat",
            login=login,
            installation_id=None,
            expires_at=None,
            repositories=set(repositories) if repositories is not None else None,
        )
        self.tokens[token.value] = token
        return token

    def authenticate(self, value: str) -> AccessToken:
        """The token behind a request; 401 "Bad credentials" when unknown or expired."""
        with self.lock:
            token = self.tokens.get(value)
            if token is None or (
                token.expires_at is not None and token.expires_at <= self.clock.now()
            ):
                raise ApiError(401, "Bad credentials")
            return token

    def expire_tokens(self) -> None:
        """Every installation token is now past its expiry (as an hour going by would)."""
        with self.lock:
            for token in self.tokens.values():
                if token.expires_at is not None:
                    token.expires_at = self.clock.now()
            self.expiries.append(sum(1 for t in self.tokens.values() if t.kind == "installation"))

    def expire_tokens_after(self, method: str, path_suffix: str) -> None:
        """Every installation token expires once GitHub has carried out the next REST call
        `method` on a path ending in `path_suffix`: a token ended at a chosen step of a
        client's work (revoked, or its hour over earlier than the client's clock says)."""
        with self.lock:
            self._expiring_after.append((method, path_suffix))

    def answered(self, method: str, path: str) -> None:
        """A REST call was carried out (rest.py; not one refused): the knobs waiting for it act."""
        with self.lock:
            for trigger in self._expiring_after:
                if trigger[0] == method and path.endswith(trigger[1]):
                    self._expiring_after.remove(trigger)
                    self.expire_tokens()
                    return

    # -- repositories and refs --------------------------------------------------------------

    def create_repository(
        self,
        owner: str,
        name: str,
        *,
        default_branch: str = "main",
        files: dict[str, str] | None = None,
    ) -> Repository:
        """A bare repository with one commit holding `files` on the default branch."""
        path = self.root / owner / f"{name}.git"
        path.parent.mkdir(parents=True, exist_ok=True)
        bare = BareRepository.create(path, default_branch=default_branch)
        contents = files if files is not None else {"README.md": f"# {name}\n"}
        tree = bare.tree_with(None, contents)
        commit = bare.commit_tree(tree, [], "Initial commit\n")
        bare.move_ref(f"refs/heads/{default_branch}", commit, expected=ZERO_SHA)
        now = self.clock.now()
        repository = Repository(
            id=new_id(),
            owner=owner,
            name=name,
            bare=bare,
            default_branch=default_branch,
            created_at=now,
            pushed_at=now,
        )
        self.repositories[repository.full_name] = repository
        return repository

    def repository_for(self, token: AccessToken, owner: str, name: str) -> Repository:
        """The repository if the token may see it; 404 otherwise, as GitHub hides it."""
        repository = self.repositories.get(f"{owner}/{name}")
        if repository is None or (
            token.repositories is not None and repository.full_name not in token.repositories
        ):
            raise not_found()
        return repository

    def protect(self, repository: Repository, branch: str, protection: Protection) -> None:
        with self.lock:
            repository.protections[branch] = protection
            repository.bare.protect_refs(
                {f"refs/heads/{b}" for b, p in repository.protections.items() if not p.allow_pushes}
            )

    def ref_moved(
        self, repository: Repository, ref: str, before: str, after: str, *, pusher: str
    ) -> None:
        """What GitHub does after any ref change (a push, a REST ref update, a merge): the push
        event, pull requests synchronised or closed, CI started on new branch heads."""
        with self.lock:
            repository.pushed_at = self.clock.now()
            forced = (
                before != ZERO_SHA
                and after != ZERO_SHA
                and not repository.bare.is_ancestor(before, after)
            )
            self.emit(
                repository,
                "push",
                {
                    "ref": ref,
                    "before": before,
                    "after": after,
                    "created": before == ZERO_SHA,
                    "deleted": after == ZERO_SHA,
                    "forced": forced,
                    "pusher_login": pusher,
                },
                sender=pusher,
            )
            if after == ZERO_SHA and ref.startswith(("refs/heads/", "refs/tags/")):
                # A deleted branch or tag also sends `delete`, its ref the short name.
                self.emit(
                    repository,
                    "delete",
                    {
                        "ref": ref.split("/", 2)[2],
                        "ref_type": "branch" if ref.startswith("refs/heads/") else "tag",
                        "pusher_type": "user",
                    },
                    sender=pusher,
                )
            if not ref.startswith("refs/heads/"):
                return
            branch = ref.removeprefix("refs/heads/")
            for pull in list(self.pulls.values()):
                if pull.repository != repository.full_name or pull.state != "open":
                    continue
                if pull.head_ref == branch:
                    if after == ZERO_SHA:
                        # Deleting a pull request's head branch closes it.
                        self._close(pull, actor=pusher)
                    else:
                        before_head, pull.head_sha = pull.head_sha, after
                        pull.updated_at = self.clock.now()
                        self.emit_pull(pull, "synchronize", sender=pusher, before=before_head)
                if pull.base_ref == branch and after != ZERO_SHA:
                    pull.base_sha = after
            if after != ZERO_SHA:
                self._start_ci(repository, after, branch)

    def push_commit(
        self,
        repository: Repository,
        branch: str,
        files: dict[str, str],
        *,
        message: str = "A person's change",
        author: str = "octocat",
    ) -> str:
        """A person pushes a commit on top of `branch` changing `files` (the stand-in's way to
        move a branch under a client's feet)."""
        with self.lock:
            bare = repository.bare
            parent = bare.resolve(f"refs/heads/{branch}")
            tree = bare.tree_with(parent, files)
            commit = bare.commit_tree(tree, [parent] if parent else [], f"{message}\n")
            bare.move_ref(f"refs/heads/{branch}", commit, expected=parent or ZERO_SHA)
            self.ref_moved(
                repository, f"refs/heads/{branch}", parent or ZERO_SHA, commit, pusher=author
            )
            return commit

    # -- pull requests ----------------------------------------------------------------------

    def create_pull(
        self,
        repository: Repository,
        *,
        title: str,
        head: str,
        base: str,
        body: str | None,
        draft: bool,
        user: str,
    ) -> PullRequest:
        with self.lock:
            head_branch = head.split(":", 1)[1] if ":" in head else head
            head_sha = repository.bare.resolve(f"refs/heads/{head_branch}")
            base_sha = repository.bare.resolve(f"refs/heads/{base}")
            if head_sha is None:
                raise validation_failed("", resource="PullRequest", field="head", code="invalid")
            if base_sha is None:
                raise validation_failed("", resource="PullRequest", field="base", code="invalid")
            for pull in self.pulls.values():
                if (
                    pull.repository == repository.full_name
                    and pull.state == "open"
                    and pull.head_ref == head_branch
                    and pull.base_ref == base
                ):
                    existing = f"{repository.owner}:{head_branch}"
                    raise validation_failed(
                        "",
                        resource="PullRequest",
                        code="custom",
                        message=f"A pull request already exists for {existing}.",
                    )
            if repository.bare.is_ancestor(head_sha, base_sha):
                raise validation_failed(
                    "",
                    resource="PullRequest",
                    code="custom",
                    message=f"No commits between {base} and {head_branch}",
                )
            number = 1 + max(
                (n for (name, n) in self.pulls if name == repository.full_name), default=0
            )
            now = self.clock.now()
            pull = PullRequest(
                id=new_id(),
                number=number,
                repository=repository.full_name,
                title=title,
                body=body,
                head_ref=head_branch,
                base_ref=base,
                user=user,
                created_at=now,
                updated_at=now,
                head_sha=head_sha,
                base_sha=base_sha,
                draft=draft,
            )
            self.pulls[(repository.full_name, number)] = pull
            self.emit_pull(pull, "opened", sender=user)
            return pull

    def pull(self, repository: Repository, number: int) -> PullRequest:
        pull = self.pulls.get((repository.full_name, number))
        if pull is None:
            raise not_found()
        return pull

    def update_pull(self, pull: PullRequest, changes: dict[str, Any], *, actor: str) -> PullRequest:
        with self.lock:
            repository = self.repositories[pull.repository]
            if "base" in changes and changes["base"] != pull.base_ref:
                base_sha = repository.bare.resolve(f"refs/heads/{changes['base']}")
                if base_sha is None:
                    raise validation_failed(
                        "", resource="PullRequest", field="base", code="invalid"
                    )
                pull.base_ref, pull.base_sha = changes["base"], base_sha
            for name in ("title", "body"):
                if name in changes:
                    setattr(pull, name, changes[name])
            pull.updated_at = self.clock.now()
            state = changes.get("state")
            if state == "closed" and pull.state == "open":
                self._close(pull, actor=actor)
            elif state == "open" and pull.state == "closed" and not pull.merged:
                head = repository.bare.resolve(f"refs/heads/{pull.head_ref}")
                if head is None:
                    raise validation_failed(
                        "",
                        resource="PullRequest",
                        code="custom",
                        message="state cannot be changed. The head branch has been deleted.",
                    )
                pull.state, pull.closed_at, pull.head_sha = "open", None, head
                self.emit_pull(pull, "reopened", sender=actor)
            elif {"title", "body", "base"} & changes.keys():
                self.emit_pull(pull, "edited", sender=actor)
            return pull

    def delete_branch_as_person(
        self, repository: Repository, branch: str, person: str = "octocat"
    ) -> None:
        """A person deletes `branch` (the branch page's delete button): what `git/delete-ref`
        does, sent by them."""
        with self.lock:
            ref = f"refs/heads/{branch}"
            current = repository.bare.resolve(ref)
            if current is None:
                raise not_found()
            repository.bare.delete_ref(ref, expected=current)
            self.ref_moved(repository, ref, current, ZERO_SHA, pusher=person)

    def close_pull_as_person(self, pull: PullRequest, person: str = "octocat") -> None:
        self.update_pull(pull, {"state": "closed"}, actor=person)

    def _close(self, pull: PullRequest, *, actor: str) -> None:
        pull.state = "closed"
        pull.closed_at = pull.updated_at = self.clock.now()
        self.emit_pull(pull, "closed", sender=actor)

    def merge_pull(
        self,
        pull: PullRequest,
        *,
        sha: str | None,
        method: str,
        title: str | None,
        message: str | None,
        actor: str,
    ) -> PullRequest:
        """PUT /pulls/{n}/merge: the sha guard, branch protection, then a real merge commit (or
        squash) written with git and the base branch moved by compare-and-swap."""
        with self.lock:
            repository = self.repositories[pull.repository]
            bare = repository.bare
            if pull.state != "open":
                raise ApiError(405, "Pull Request is not mergeable")
            head = bare.resolve(f"refs/heads/{pull.head_ref}")
            base = bare.resolve(f"refs/heads/{pull.base_ref}")
            if head is None or base is None:
                raise ApiError(405, "Pull Request is not mergeable")
            if sha is not None and sha != head:
                raise ApiError(409, "Head branch was modified. Review and try the merge again.")
            if method not in ("merge", "squash"):
                raise ApiError(
                    405, f"{method.capitalize()} merges are not allowed on this repository."
                )
            self._check_protection(repository, pull, head, base)
            tree = bare.merge_tree(base, head)
            if tree is None:
                raise ApiError(405, "Pull Request is not mergeable")
            if method == "merge":
                subject = (
                    title
                    or f"Merge pull request #{pull.number} from {repository.owner}/{pull.head_ref}"
                )
                body = message if message is not None else pull.title
                merged = bare.commit_tree(tree, [base, head], f"{subject}\n\n{body}\n")
            else:
                subject = title or f"{pull.title} (#{pull.number})"
                body = message if message is not None else (pull.body or "")
                merged = bare.commit_tree(tree, [base], f"{subject}\n\n{body}\n".rstrip() + "\n")
            try:
                bare.move_ref(f"refs/heads/{pull.base_ref}", merged, expected=base)
            except GitRefusal:
                raise ApiError(
                    405, "Base branch was modified. Review and try the merge again."
                ) from None
            now = self.clock.now()
            pull.head_sha, pull.base_sha = head, base
            pull.merged_at = pull.closed_at = pull.updated_at = now
            pull.merge_commit_sha, pull.merged_by, pull.state = merged, actor, "closed"
            self.emit_pull(pull, "closed", sender=actor)
            self.ref_moved(repository, f"refs/heads/{pull.base_ref}", base, merged, pusher=actor)
            return pull

    def protection_refusal(self, pull: PullRequest) -> str | None:
        """What branch protection would answer a merge of `pull` now (None: it allows it)."""
        repository = self.repositories[pull.repository]
        try:
            self._check_protection(repository, pull, pull.head_sha, pull.base_sha)
        except ApiError as refusal:
            return str(refusal.body["message"])
        return None

    def _check_protection(
        self, repository: Repository, pull: PullRequest, head: str, base: str
    ) -> None:
        protection = repository.protections.get(pull.base_ref)
        if protection is None:
            return
        if pull.approvals < protection.required_approvals:
            count = protection.required_approvals
            review = "review is" if count == 1 else "reviews are"
            raise ApiError(
                405,
                f"At least {count} approving {review} required by reviewers with write access.",
                documentation_url="https://docs.github.com/articles/about-protected-branches",
            )
        states = self.check_states(repository, head)
        for context in protection.required_checks:
            state = states.get(context)
            if state != "success":
                verdict = "is failing" if state == "failure" else "is expected"
                raise ApiError(
                    405,
                    f'Required status check "{context}" {verdict}.',
                    documentation_url="https://docs.github.com/articles/about-protected-branches",
                )
        if protection.strict and not repository.bare.is_ancestor(base, head):
            raise ApiError(
                405,
                "Head branch is out of date. Review and try the merge again.",
                documentation_url="https://docs.github.com/articles/about-protected-branches",
            )

    # -- checks and statuses ----------------------------------------------------------------

    def add_check_script(self, repository: Repository, script: CheckScript) -> None:
        with self.lock:
            self.check_scripts.setdefault(repository.full_name, []).append(script)

    def _start_ci(self, repository: Repository, sha: str, branch: str) -> None:
        for script in self.check_scripts.get(repository.full_name, []):
            if fnmatch.fnmatchcase(branch, script.branches):
                self.report(repository, sha, script, head_branch=branch)

    def report(
        self,
        repository: Repository,
        sha: str,
        script: CheckScript,
        *,
        head_branch: str | None = None,
    ) -> None:
        """Start one scripted check on commit `sha` now; it ends after `script.after` seconds
        of the stand-in's clock (or never, when its outcome is None)."""
        with self.lock:
            now = self.clock.now()
            if script.kind == "status":
                self.set_status(
                    repository,
                    sha,
                    context=script.name,
                    state="pending",
                    description="Waiting for the stand-in CI",
                    target_url=script.details_url,
                    creator="stand-in-ci",
                )
                if script.outcome is not None:
                    outcome = script.outcome
                    self._due.append(
                        (
                            now + timedelta(seconds=script.after),
                            lambda: self.set_status(
                                repository,
                                sha,
                                context=script.name,
                                state=outcome,
                                description=f"The stand-in CI says {outcome}",
                                target_url=script.details_url,
                                creator="stand-in-ci",
                            ),
                        )
                    )
                return
            suite = self._suite(repository, sha, head_branch)
            run = CheckRun(
                id=new_id(),
                repository=repository.full_name,
                head_sha=sha,
                name=script.name,
                suite_id=suite.id,
                details_url=script.details_url,
                started_at=now,
            )
            self.check_runs.append(run)
            self.emit(repository, "check_run", {"action": "created", "check_run": run})
            if script.outcome is not None:
                outcome = script.outcome
                self._due.append(
                    (
                        now + timedelta(seconds=script.after),
                        lambda: self.complete_check_run(run, outcome),
                    )
                )

    def _suite(self, repository: Repository, sha: str, head_branch: str | None) -> CheckSuite:
        key = (repository.full_name, sha)
        if key not in self.check_suites:
            now = self.clock.now()
            self.check_suites[key] = CheckSuite(
                new_id(), repository.full_name, sha, head_branch, now, now
            )
        return self.check_suites[key]

    def complete_check_run(self, run: CheckRun, conclusion: str) -> None:
        with self.lock:
            repository = self.repositories[run.repository]
            run.status, run.conclusion, run.completed_at = "completed", conclusion, self.clock.now()
            self.emit(repository, "check_run", {"action": "completed", "check_run": run})
            runs = [r for r in self.check_runs if r.suite_id == run.suite_id]
            if all(r.status == "completed" for r in runs):
                suite = self.check_suites[(run.repository, run.head_sha)]
                suite.updated_at = self.clock.now()
                self.emit(repository, "check_suite", {"action": "completed", "check_suite": suite})

    def set_status(
        self,
        repository: Repository,
        sha: str,
        *,
        context: str,
        state: str,
        description: str | None,
        target_url: str | None,
        creator: str,
    ) -> CommitStatus:
        with self.lock:
            if state not in ("error", "failure", "pending", "success"):
                raise validation_failed(
                    "",
                    resource="Status",
                    field="state",
                    code="custom",
                    message="state is not included in the list",
                )
            if repository.bare.resolve(sha) != sha:
                raise validation_failed(f"No commit found for SHA: {sha}")
            now = self.clock.now()
            status = CommitStatus(
                id=new_id(),
                repository=repository.full_name,
                sha=sha,
                context=context,
                state=state,
                description=description,
                target_url=target_url,
                creator=creator,
                created_at=now,
                updated_at=now,
            )
            self.statuses.append(status)
            self.emit(repository, "status", {"status": status})
            return status

    def runs_for(self, repository: Repository, sha: str) -> list[CheckRun]:
        return [
            r for r in self.check_runs if r.repository == repository.full_name and r.head_sha == sha
        ]

    def latest_statuses(self, repository: Repository, sha: str) -> list[CommitStatus]:
        """The newest status of each context, newest first, as the combined status lists them."""
        latest: dict[str, CommitStatus] = {}
        for status in self.statuses:
            if status.repository == repository.full_name and status.sha == sha:
                latest[status.context] = status
        return sorted(latest.values(), key=lambda s: s.id, reverse=True)

    @staticmethod
    def combined_state(statuses: list[CommitStatus]) -> str:
        """GitHub's combined state of commit statuses only: failure if any errored or failed,
        pending if any is pending OR THERE ARE NONE (the trap: check runs are not counted),
        success otherwise."""
        states = {s.state for s in statuses}
        if states & {"error", "failure"}:
            return "failure"
        if not statuses or "pending" in states:
            return "pending"
        return "success"

    def check_states(self, repository: Repository, sha: str) -> dict[str, str]:
        """Each check's name or status's context on `sha` to success/failure/pending, as branch
        protection judges required checks."""
        states: dict[str, str] = {}
        for run in self.runs_for(repository, sha):
            if run.status != "completed":
                states[run.name] = "pending"
            elif run.conclusion in FAILING_CONCLUSIONS:
                states[run.name] = "failure"
            else:
                states[run.name] = "success"
        for status in self.latest_statuses(repository, sha):
            states[status.context] = {"error": "failure"}.get(status.state, status.state)
        return states

    # -- deployments ------------------------------------------------------------------------

    def create_deployment(
        self,
        repository: Repository,
        *,
        ref: str,
        task: str,
        environment: str,
        payload: Any,
        description: str | None,
        required_contexts: list[str] | None,
        production_environment: bool | None,
        transient_environment: bool,
        creator: str,
    ) -> Deployment:
        with self.lock:
            sha = repository.bare.resolve(ref)
            if sha is None:
                raise ApiError(422, f"No ref found for: {ref}")
            # Unless told which contexts must pass (an empty list: none), GitHub refuses a
            # deployment whose commit's checks are not all green.
            states = self.check_states(repository, sha)
            wanted = list(states) if required_contexts is None else required_contexts
            not_green = [c for c in wanted if states.get(c) != "success"]
            if not_green:
                raise ApiError(
                    409,
                    f"Conflict: Commit status checks failed for {ref}.",
                    documentation_url="https://docs.github.com/rest/deployments/deployments#create-a-deployment",
                    errors=[
                        {
                            "contexts": [
                                {"context": c, "state": states.get(c, "missing")} for c in not_green
                            ],
                            "resource": "Deployment",
                            "field": "required_contexts",
                            "code": "invalid",
                        }
                    ],
                )
            now = self.clock.now()
            deployment = Deployment(
                id=new_id(),
                repository=repository.full_name,
                sha=sha,
                ref=ref,
                task=task,
                environment=environment,
                payload=payload,
                description=description,
                creator=creator,
                created_at=now,
                updated_at=now,
                production_environment=(
                    production_environment
                    if production_environment is not None
                    else environment == "production"
                ),
                transient_environment=transient_environment,
            )
            self.deployments[deployment.id] = deployment
            self.emit(repository, "deployment", {"action": "created", "deployment": deployment})
            return deployment

    def deployment(self, repository: Repository, deployment_id: int) -> Deployment:
        deployment = self.deployments.get(deployment_id)
        if deployment is None or deployment.repository != repository.full_name:
            raise not_found()
        return deployment

    def add_deployment_status(
        self,
        deployment: Deployment,
        *,
        state: str,
        description: str,
        log_url: str,
        environment_url: str,
        environment: str | None,
        creator: str,
    ) -> DeploymentStatus:
        with self.lock:
            allowed = (
                "error",
                "failure",
                "inactive",
                "in_progress",
                "queued",
                "pending",
                "success",
            )
            if state not in allowed:
                raise validation_failed(
                    "", resource="DeploymentStatus", field="state", code="invalid"
                )
            status = DeploymentStatus(
                id=new_id(),
                deployment_id=deployment.id,
                state=state,
                description=description,
                log_url=log_url,
                environment_url=environment_url,
                environment=environment or deployment.environment,
                creator=creator,
                created_at=self.clock.now(),
            )
            deployment.statuses.append(status)
            deployment.updated_at = status.created_at
            repository = self.repositories[deployment.repository]
            self.emit(
                repository,
                "deployment_status",
                {
                    "action": "created",
                    "deployment_status": status,
                    "deployment": deployment,
                },
            )
            return status

    # -- time and events --------------------------------------------------------------------

    def settle(self) -> None:
        """Apply every scripted change whose time has come on the stand-in's clock."""
        with self.lock:
            now = self.clock.now()
            due = [item for item in self._due if item[0] <= now]
            self._due = [item for item in self._due if item[0] > now]
            for _, change in sorted(due, key=lambda item: item[0]):
                change()

    def emit(
        self,
        repository: Repository,
        event: str,
        payload: dict[str, Any],
        *,
        sender: str | None = None,
    ) -> None:
        self.on_event(event, repository.full_name, {**payload, "_sender": sender})

    def emit_pull(
        self, pull: PullRequest, action: str, *, sender: str, before: str | None = None
    ) -> None:
        payload: dict[str, Any] = {"action": action, "number": pull.number, "pull_request": pull}
        if before is not None:
            payload |= {"before": before, "after": pull.head_sha}
        self.emit(self.repositories[pull.repository], "pull_request", payload, sender=sender)
