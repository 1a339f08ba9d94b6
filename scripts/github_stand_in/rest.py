"""The REST endpoints of the GitHub stand-in (paths and operation ids from GitHub's OpenAPI
description, listed in FACTS.md), with GitHub's authentication rules, rate-limit headers and
error bodies. Each handler is a plain function of the request; the state does the rules."""

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from scripts.github_stand_in.bare_repo import ZERO_SHA, GitRefusal
from scripts.github_stand_in.records import (
    JWT_MAX_LIFETIME,
    AccessToken,
    ApiError,
    App,
    Repository,
    not_found,
    validation_failed,
)
from scripts.github_stand_in.shapes import Shapes
from scripts.github_stand_in.state import GitHubState

# A client names the REST API version it speaks in X-GitHub-Api-Version; without it GitHub
# answers 2022-11-28. Version 2026-03-10 dropped these fields (found by comparing the two
# descriptions, see FACTS.md).
DEFAULT_VERSION = "2022-11-28"
DROPPED_IN_2026_03_10 = {
    "pull": ("assignee", "merge_commit_sha"),
    "repository": ("has_downloads", "use_squash_pr_title_as_default"),
}


def for_version(body: Any, version: str) -> Any:
    """The answer as `version` shapes it (every pull request and repository inside it)."""
    if version != "2026-03-10":
        return body
    if isinstance(body, list):
        return [for_version(item, version) for item in body]
    if not isinstance(body, dict):
        return body
    kind = "pull" if "diff_url" in body else "repository" if "clone_url" in body else None
    dropped = DROPPED_IN_2026_03_10.get(kind or "", ())
    return {k: for_version(v, version) for k, v in body.items() if k not in dropped}


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, str]  # from the path
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            value = json.loads(self.body)
        except ValueError:
            raise ApiError(400, "Problems parsing JSON") from None
        if not isinstance(value, dict):
            raise ApiError(400, "Problems parsing JSON")
        return value


@dataclass
class Answer:
    status: int
    body: Any  # JSON, or None for an empty body
    headers: dict[str, str]


Handler = Callable[["RestApi", Call, Any], tuple[int, Any]]
ROUTES: list[tuple[str, re.Pattern[str], str, bool]] = []  # method, path, handler name, app JWT


def route(method: str, path: str, *, app_jwt: bool = False) -> Callable[[Handler], Handler]:
    def parameter(match: re.Match[str]) -> str:
        name, rest_of_path = match[1], match[2]
        # Numbers are digits (anything else is GitHub's 404); `:path` takes slashes (refs).
        shape = ".+" if rest_of_path else r"\d+" if name.endswith(("_id", "_number")) else "[^/]+"
        return f"(?P<{name}>{shape})"

    pattern = re.compile("^" + re.sub(r"\{(\w+)(:path)?\}", parameter, path) + "$")

    def register(handler: Handler) -> Handler:
        ROUTES.append((method, pattern, handler.__name__, app_jwt))
        return handler

    return register


def require(body: dict[str, Any], *names: str) -> None:
    for name in names:
        if body.get(name) in (None, ""):
            raise ApiError(422, f'Invalid request.\n\n"{name}" wasn\'t supplied.')


class RestApi:
    def __init__(self, state: GitHubState, shapes: Shapes) -> None:
        self.state = state
        self.shapes = shapes

    def serve(self, call: Call) -> Answer | None:
        """The answer to a REST call; None when no REST route matches."""
        for method, pattern, name, app_jwt in ROUTES:
            match = pattern.match(call.path)
            if match is None or method != call.method:
                continue
            call.params = match.groupdict()
            headers: dict[str, str] = {}
            try:
                self.state.settle()
                if app_jwt:
                    who: Any = self.authenticate_app(call)
                else:
                    who = self.authenticate(call)
                    headers = self.state.limits.count_request(who, call.method, call.path)
                with self.state.lock:
                    status, body = getattr(self, name)(call, who)
                    self.state.answered(call.method, call.path)
                body = for_version(body, call.headers.get("x-github-api-version", DEFAULT_VERSION))
                if call.method == "GET" and status == 200:
                    return self._cacheable(call, who, body, headers)
                return Answer(status, body, headers)
            except ApiError as error:
                return Answer(error.status, error.body, {**headers, **error.headers})
        return None

    def _cacheable(
        self, call: Call, token: AccessToken, body: Any, headers: dict[str, str]
    ) -> Answer:
        """GitHub's GET answers may be cached for 60 s (a client with an HTTP cache does not ask
        again within that time) and carry an ETag; a matching If-None-Match gets 304, which
        does not count against the rate limit."""
        etag = '"' + hashlib.md5(json.dumps(body, sort_keys=True).encode()).hexdigest() + '"'
        headers = {
            **headers,
            "cache-control": "private, max-age=60, s-maxage=60",
            "etag": etag,
            "vary": "Accept, Authorization, Cookie, X-GitHub-OTP",
        }
        if call.headers.get("if-none-match") == etag:
            headers |= self.state.limits.refund_request(token)
            return Answer(304, None, headers)
        return Answer(200, body, headers)

    # -- authentication ---------------------------------------------------------------------

    @staticmethod
    def credential(call: Call) -> str | None:
        scheme, _, value = call.headers.get("authorization", "").partition(" ")
        if scheme.lower() in ("token", "bearer") and value:
            return value.strip()
        return None

    def authenticate(self, call: Call) -> AccessToken:
        value = self.credential(call)
        if value is None:
            # Unauthenticated calls see only public data; every repository here is private.
            raise ApiError(401, "Requires authentication")
        return self.state.authenticate(value)

    def authenticate_app(self, call: Call) -> App:
        """An App's RS256 JWT: signed by one of the apps' keys, iss its id (or client id),
        iat not in the future, exp in the future and at most ten minutes away."""
        value = self.credential(call)
        if value is None:
            raise ApiError(401, "A JSON web token could not be decoded")
        try:
            claims = jwt.decode(value, options={"verify_signature": False})
            header = jwt.get_unverified_header(value)
        except jwt.PyJWTError:
            raise ApiError(401, "A JSON web token could not be decoded") from None
        app = next(
            (
                a
                for a in self.state.apps.values()
                if str(claims.get("iss")) in (str(a.id), a.client_id)
            ),
            None,
        )
        if app is None or header.get("alg") != "RS256":
            raise ApiError(401, "A JSON web token could not be decoded")
        try:
            jwt.decode(
                value,
                app.public_key_pem,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise ApiError(401, "A JSON web token could not be decoded") from None
        now = datetime.now(UTC).timestamp()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or iat > now + 60:
            raise ApiError(
                401,
                "'Issued at' claim ('iat') must be an Integer representing the time that the "
                "assertion was issued",
            )
        if not isinstance(exp, int) or exp <= now:
            raise ApiError(
                401,
                "'Expiration time' claim ('exp') must be a numeric value representing the future "
                "time at which the assertion expires",
            )
        if exp - now > JWT_MAX_LIFETIME.total_seconds():
            raise ApiError(401, "'Expiration time' claim ('exp') is too far in the future")
        return app

    def repository(self, call: Call, token: AccessToken) -> Repository:
        return self.state.repository_for(token, call.params["owner"], call.params["repo"])

    # -- apps ----------------------------------------------------------------------------

    @route("GET", "/app", app_jwt=True)
    def get_authenticated_app(self, call: Call, app: App) -> tuple[int, Any]:
        return 200, self.shapes.integration(app)

    @route("POST", "/app/installations/{installation_id}/access_tokens", app_jwt=True)
    def create_installation_access_token(self, call: Call, app: App) -> tuple[int, Any]:
        installation = self.state.installations.get(int(call.params["installation_id"]))
        if installation is None or installation.app_id != app.id:
            raise not_found()
        token = self.state.issue_installation_token(installation.id)
        return 201, self.shapes.installation_token(token)

    # -- repositories and refs ------------------------------------------------------------

    @route("GET", "/repos/{owner}/{repo}")
    def get_repository(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        return 200, self.shapes.repository(self.repository(call, token))

    @route("GET", "/repos/{owner}/{repo}/git/ref/{ref:path}")
    def get_ref(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        ref = f"refs/{call.params['ref']}"
        sha = repository.bare.refs().get(ref)
        if sha is None:
            raise not_found()
        return 200, self.shapes.ref(repository, ref, sha)

    @route("POST", "/repos/{owner}/{repo}/git/refs")
    def create_ref(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        body = call.json()
        require(body, "ref", "sha")
        ref, sha = body["ref"], body["sha"]
        if not ref.startswith("refs/") or ref.count("/") < 2:
            raise validation_failed("Reference name is invalid")
        if repository.bare.resolve(sha) != sha:
            raise validation_failed("Object does not exist")
        self._refuse_protected(repository, ref)
        try:
            repository.bare.move_ref(ref, sha, expected=ZERO_SHA)
        except GitRefusal:
            raise validation_failed("Reference already exists") from None
        self.state.ref_moved(repository, ref, ZERO_SHA, sha, pusher=token.login)
        return 201, self.shapes.ref(repository, ref, sha)

    @route("PATCH", "/repos/{owner}/{repo}/git/refs/{ref:path}")
    def update_ref(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        body = call.json()
        require(body, "sha")
        ref, sha = f"refs/{call.params['ref']}", body["sha"]
        current = repository.bare.refs().get(ref)
        if current is None:
            raise validation_failed("Reference does not exist")
        if repository.bare.resolve(sha) != sha:
            raise validation_failed("Object does not exist")
        if not body.get("force", False) and not repository.bare.is_ancestor(current, sha):
            raise validation_failed("Update is not a fast forward")
        self._refuse_protected(repository, ref)
        try:
            repository.bare.move_ref(ref, sha, expected=current)
        except GitRefusal:
            raise validation_failed("Update is not a fast forward") from None
        self.state.ref_moved(repository, ref, current, sha, pusher=token.login)
        return 200, self.shapes.ref(repository, ref, sha)

    @route("DELETE", "/repos/{owner}/{repo}/git/refs/{ref:path}")
    def delete_ref(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        ref = f"refs/{call.params['ref']}"
        current = repository.bare.refs().get(ref)
        if current is None:
            raise validation_failed("Reference does not exist")
        self._refuse_protected(repository, ref)
        repository.bare.delete_ref(ref, expected=current)
        self.state.ref_moved(repository, ref, current, ZERO_SHA, pusher=token.login)
        return 204, None

    @staticmethod
    def _refuse_protected(repository: Repository, ref: str) -> None:
        protection = repository.protections.get(ref.removeprefix("refs/heads/"))
        if ref.startswith("refs/heads/") and protection is not None and not protection.allow_pushes:
            raise validation_failed(f"Protected branch update failed for {ref}.")

    # -- pull requests --------------------------------------------------------------------

    @route("POST", "/repos/{owner}/{repo}/pulls")
    def create_pull(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        body = call.json()
        require(body, "head", "base")
        if not body.get("title") and not body.get("issue"):
            raise ApiError(422, 'Invalid request.\n\n"title" wasn\'t supplied.')
        pull = self.state.create_pull(
            repository,
            title=body["title"],
            head=body["head"],
            base=body["base"],
            body=body.get("body"),
            draft=bool(body.get("draft", False)),
            user=token.login,
        )
        return 201, self.shapes.pull(pull)

    @route("GET", "/repos/{owner}/{repo}/pulls")
    def list_pulls(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        state = call.query.get("state", "open")
        head = call.query.get("head")
        base = call.query.get("base")
        pulls = [
            p
            for p in self.state.pulls.values()
            if p.repository == repository.full_name
            and (state == "all" or p.state == state)
            and (head is None or f"{repository.owner}:{p.head_ref}" == head)
            and (base is None or p.base_ref == base)
        ]
        pulls.sort(
            key=lambda p: p.created_at, reverse=call.query.get("direction", "desc") == "desc"
        )
        return 200, [self.shapes.pull_simple(p) for p in self._page(call, pulls)]

    @route("GET", "/repos/{owner}/{repo}/pulls/{pull_number}")
    def get_pull(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        return 200, self.shapes.pull(self.state.pull(repository, int(call.params["pull_number"])))

    @route("PATCH", "/repos/{owner}/{repo}/pulls/{pull_number}")
    def update_pull(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        pull = self.state.pull(repository, int(call.params["pull_number"]))
        changes = {k: v for k, v in call.json().items() if k in ("title", "body", "state", "base")}
        return 200, self.shapes.pull(self.state.update_pull(pull, changes, actor=token.login))

    @route("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/merge")
    def check_if_merged(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        if not self.state.pull(repository, int(call.params["pull_number"])).merged:
            raise not_found()
        return 204, None

    @route("PUT", "/repos/{owner}/{repo}/pulls/{pull_number}/merge")
    def merge_pull(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        pull = self.state.pull(repository, int(call.params["pull_number"]))
        body = call.json()
        self.state.merge_gate.pass_through()  # outside the lock: the rest of GitHub goes on
        pull = self.state.merge_pull(
            pull,
            sha=body.get("sha"),
            method=body.get("merge_method", "merge"),
            title=body.get("commit_title"),
            message=body.get("commit_message"),
            actor=token.login,
        )
        return 200, {
            "sha": pull.merge_commit_sha,
            "merged": True,
            "message": "Pull Request successfully merged",
        }

    # -- checks and statuses --------------------------------------------------------------

    def _commit(self, repository: Repository, ref: str) -> str:
        sha = repository.bare.resolve(ref)
        if sha is None:
            raise validation_failed(f"No commit found for SHA: {ref}")
        return sha

    @route("GET", "/repos/{owner}/{repo}/commits/{ref:path}/check-runs")
    def list_check_runs_for_ref(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        sha = self._commit(repository, call.params["ref"])
        runs = self.state.runs_for(repository, sha)
        if call.query.get("filter", "latest") == "latest":
            latest = {r.name: r for r in runs}
            runs = list(latest.values())
        if "check_name" in call.query:
            runs = [r for r in runs if r.name == call.query["check_name"]]
        if "status" in call.query:
            runs = [r for r in runs if r.status == call.query["status"]]
        runs.sort(key=lambda r: r.id, reverse=True)
        return 200, {
            "total_count": len(runs),
            "check_runs": [self.shapes.check_run(r) for r in self._page(call, runs)],
        }

    @route("GET", "/repos/{owner}/{repo}/commits/{ref:path}/status")
    def get_combined_status_for_ref(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        return 200, self.shapes.combined_status(
            repository, self._commit(repository, call.params["ref"])
        )

    @route("GET", "/repos/{owner}/{repo}/commits/{ref:path}/statuses")
    def list_commit_statuses_for_ref(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        sha = self._commit(repository, call.params["ref"])
        statuses = [
            s for s in self.state.statuses if s.repository == repository.full_name and s.sha == sha
        ]
        statuses.sort(key=lambda s: s.id, reverse=True)
        return 200, [self.shapes.status(s) for s in self._page(call, statuses)]

    @route("POST", "/repos/{owner}/{repo}/statuses/{sha}")
    def create_commit_status(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        body = call.json()
        require(body, "state")
        status = self.state.set_status(
            repository,
            call.params["sha"],
            context=body.get("context") or "default",
            state=body["state"],
            description=body.get("description"),
            target_url=body.get("target_url"),
            creator=token.login,
        )
        return 201, self.shapes.status(status)

    # -- deployments ----------------------------------------------------------------------

    @route("POST", "/repos/{owner}/{repo}/deployments")
    def create_deployment(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        body = call.json()
        require(body, "ref")
        deployment = self.state.create_deployment(
            repository,
            ref=body["ref"],
            task=body.get("task", "deploy"),
            environment=body.get("environment", "production"),
            payload=body.get("payload", {}),
            description=body.get("description"),
            required_contexts=body.get("required_contexts"),
            production_environment=body.get("production_environment"),
            transient_environment=bool(body.get("transient_environment", False)),
            creator=token.login,
        )
        return 201, self.shapes.deployment(deployment)

    @route("GET", "/repos/{owner}/{repo}/deployments")
    def list_deployments(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        wanted = {
            k: call.query[k] for k in ("sha", "ref", "task", "environment") if k in call.query
        }
        found = [
            d
            for d in self.state.deployments.values()
            if d.repository == repository.full_name
            and all(getattr(d, k) == v for k, v in wanted.items())
        ]
        found.sort(key=lambda d: d.id, reverse=True)
        return 200, [self.shapes.deployment(d) for d in self._page(call, found)]

    @route("GET", "/repos/{owner}/{repo}/deployments/{deployment_id}")
    def get_deployment(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        return 200, self.shapes.deployment(
            self.state.deployment(repository, int(call.params["deployment_id"]))
        )

    @route("POST", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses")
    def create_deployment_status(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        deployment = self.state.deployment(repository, int(call.params["deployment_id"]))
        body = call.json()
        require(body, "state")
        status = self.state.add_deployment_status(
            deployment,
            state=body["state"],
            description=body.get("description", ""),
            log_url=body.get("log_url") or body.get("target_url") or "",
            environment_url=body.get("environment_url", ""),
            environment=body.get("environment"),
            creator=token.login,
        )
        return 201, self.shapes.deployment_status(deployment, status)

    @route("GET", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses")
    def list_deployment_statuses(self, call: Call, token: AccessToken) -> tuple[int, Any]:
        repository = self.repository(call, token)
        deployment = self.state.deployment(repository, int(call.params["deployment_id"]))
        statuses = sorted(deployment.statuses, key=lambda s: s.id, reverse=True)
        return 200, [
            self.shapes.deployment_status(deployment, s) for s in self._page(call, statuses)
        ]

    @staticmethod
    def _page(call: Call, items: list[Any]) -> list[Any]:
        per_page = min(int(call.query.get("per_page", "30")), 100)
        page = max(int(call.query.get("page", "1")), 1)
        return items[(page - 1) * per_page : page * per_page]
