"""The GitHub stand-in keeps GitHub's contract: driven by githubkit (App and token auth) and by
real `git clone/push/fetch` over smart HTTP, every answer parses into githubkit's models
(generated from GitHub's OpenAPI description), with GitHub's status codes and traps."""

import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pygit2
import pytest
from githubkit import AppAuthStrategy, GitHub, TokenAuthStrategy
from githubkit import webhooks as github_webhooks
from githubkit.exception import PrimaryRateLimitExceeded, RequestFailed, SecondaryRateLimitExceeded
from githubkit_schemas.latest.models import (
    BasicError,
    CheckRun,
    CombinedCommitStatus,
    Deployment,
    DeploymentStatus,
    FullRepository,
    GitRef,
    Integration,
    PullRequest,
    PullRequestMergeResult,
    PullRequestSimple,
    Status,
)
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from scripts.github_stand_in import CheckScript, GitHubStandIn, Protection, github_stand_in
from scripts.github_stand_in.records import App, Installation, Repository


@dataclass
class World:
    hub: GitHubStandIn
    app: App
    installation: Installation
    repository: Repository

    def app_client(self) -> GitHub[AppAuthStrategy]:
        return GitHub(
            AppAuthStrategy(self.app.id, self.app.private_key_pem),
            base_url=self.hub.url,
            auto_retry=False,
            http_cache=False,
        )

    def installation_client(self) -> GitHub:
        return self.app_client().with_auth(
            AppAuthStrategy(self.app.id, self.app.private_key_pem).as_installation(
                self.installation.id
            )
        )

    def token_client(self, token: str, **options: object) -> GitHub[TokenAuthStrategy]:
        settings: dict[str, object] = {"auto_retry": False, "http_cache": False, **options}
        return GitHub(TokenAuthStrategy(token), base_url=self.hub.url, **settings)  # type: ignore[arg-type]

    def token(self) -> str:
        return self.hub.state.issue_installation_token(self.installation.id).value


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with github_stand_in(tmp_path / "hub") as hub:
        app = hub.create_app()
        repository = hub.create_repository(
            "acme",
            "storefront",
            files={"index.html": "<h1>Shop</h1>\n", "theme/colors.css": "a {}\n"},
        )
        installation = hub.install(app, "acme", ["acme/storefront"])
        yield World(hub, app, installation, repository)


def git(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Tester",
        "GIT_AUTHOR_EMAIL": "tester@example.com",
        "GIT_COMMITTER_NAME": "Tester",
        "GIT_COMMITTER_EMAIL": "tester@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=environment)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done


def commit_on_branch(world: World, workdir: Path, branch: str, files: dict[str, str]) -> str:
    """Clone, commit `files` on `branch` and push it; the pushed sha."""
    if not workdir.exists():
        git("clone", "--quiet", world.hub.clone_url(world.repository, world.token()), str(workdir))
    git("checkout", "--quiet", "-B", branch, cwd=workdir)
    for name, text in files.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text(text)
    git("add", "-A", cwd=workdir)
    git("commit", "--quiet", "-m", f"change on {branch}", cwd=workdir)
    git("push", "--quiet", "origin", branch, cwd=workdir)
    return git("rev-parse", "HEAD", cwd=workdir).stdout.strip()


# -- authentication -------------------------------------------------------------------------


async def test_an_app_jwt_buys_an_installation_token_that_reads_the_repository(
    world: World,
) -> None:
    app_client = world.app_client()
    me = (await app_client.rest.apps.async_get_authenticated()).parsed_data
    assert isinstance(me, Integration) and me.id == world.app.id

    github = world.installation_client()
    repository = (await github.rest.repos.async_get("acme", "storefront")).parsed_data
    assert isinstance(repository, FullRepository)
    assert (repository.full_name, repository.default_branch) == ("acme/storefront", "main")
    assert repository.clone_url == f"{world.hub.url}/acme/storefront.git"

    [token] = [t for t in world.hub.state.tokens.values() if t.kind == "installation"]
    assert token.value.startswith("ghs_")
    assert token.expires_at is not None
    lifetime = token.expires_at - world.hub.clock.now()
    assert timedelta(minutes=59) < lifetime <= timedelta(hours=1)


async def test_a_forged_or_overlong_app_jwt_is_refused_with_githubs_messages(world: World) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    now = int(time.time())
    forged = jwt.encode(
        {"iss": str(world.app.id), "iat": now - 60, "exp": now + 500}, other_key, "RS256"
    )
    overlong = jwt.encode(
        {"iss": str(world.app.id), "iat": now - 60, "exp": now + 3600},
        world.app.private_key_pem,
        "RS256",
    )
    expired = jwt.encode(
        {"iss": str(world.app.id), "iat": now - 900, "exp": now - 300},
        world.app.private_key_pem,
        "RS256",
    )
    url = f"{world.hub.url}/app/installations/{world.installation.id}/access_tokens"
    answers = {}
    async with httpx.AsyncClient() as http:
        for name, token in {"forged": forged, "overlong": overlong, "expired": expired}.items():
            response = await http.post(url, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401
            answers[name] = BasicError.model_validate(response.json()).message
    assert answers["forged"] == "A JSON web token could not be decoded"
    assert answers["overlong"] == "'Expiration time' claim ('exp') is too far in the future"
    assert answers["expired"].startswith("'Expiration time' claim ('exp') must be a numeric value")
    assert not [t for t in world.hub.state.tokens.values() if t.kind == "installation"]


async def test_an_expired_installation_token_gets_401_bad_credentials_and_a_new_one_works(
    world: World, tmp_path: Path
) -> None:
    old = world.token()
    github = world.token_client(old)
    await github.rest.repos.async_get("acme", "storefront")

    world.hub.clock.advance(3601)

    with pytest.raises(RequestFailed) as refused:
        await github.rest.repos.async_get("acme", "storefront")
    assert refused.value.response.status_code == 401
    error = BasicError.model_validate(refused.value.response.json())
    assert (error.message, error.documentation_url) == (
        "Bad credentials",
        "https://docs.github.com/rest",
    )
    clone = git(
        "clone", world.hub.clone_url(world.repository, old), str(tmp_path / "c"), check=False
    )
    assert clone.returncode != 0 and "Authentication failed" in clone.stderr

    # A fresh token (the App asks again with its JWT) works at once.
    fresh = world.installation_client()
    assert (await fresh.rest.repos.async_get("acme", "storefront")).status_code == 200


async def test_a_token_sees_only_its_repositories(world: World) -> None:
    world.hub.create_repository("acme", "secret")
    github = world.token_client(world.token())
    with pytest.raises(RequestFailed) as hidden:
        await github.rest.repos.async_get("acme", "secret")
    assert hidden.value.response.status_code == 404
    assert hidden.value.response.json()["message"] == "Not Found"

    # A person's fine-grained token sees what it was granted, the same way.
    personal = world.hub.state.create_personal_token("alice", ["acme/secret"]).value
    assert personal.startswith("github_pat_")
    as_alice = world.token_client(personal)
    assert (await as_alice.rest.repos.async_get("acme", "secret")).parsed_data.name == "secret"
    with pytest.raises(RequestFailed) as not_granted:
        await as_alice.rest.repos.async_get("acme", "storefront")
    assert not_granted.value.response.status_code == 404


# -- git over smart HTTP ---------------------------------------------------------------------


async def test_git_clone_push_and_fetch_move_the_refs_the_rest_api_reports(
    world: World, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    pushed = commit_on_branch(world, work, "changeflow/r1", {"index.html": "<h1>Sale</h1>\n"})
    github = world.token_client(world.token())
    ref = (
        await github.rest.git.async_get_ref("acme", "storefront", "heads/changeflow/r1")
    ).parsed_data
    assert isinstance(ref, GitRef)
    assert (ref.ref, ref.object_.sha) == ("refs/heads/changeflow/r1", pushed)

    # A person pushes to main on GitHub; a fetch brings exactly that commit.
    theirs = world.hub.state.push_commit(world.repository, "main", {"about.html": "us\n"})
    git("fetch", "--quiet", "origin", cwd=work)
    assert git("rev-parse", "origin/main", cwd=work).stdout.strip() == theirs
    assert git("show", "origin/main:about.html", cwd=work).stdout == "us\n"

    # The push was an event, as on GitHub.
    pushes = [d.payload for d in world.hub.webhooks.of("push")]
    assert [(p["ref"], p["after"]) for p in pushes] == [
        ("refs/heads/changeflow/r1", pushed),
        ("refs/heads/main", theirs),
    ]
    assert pushes[0]["created"] is True and pushes[0]["head_commit"]["id"] == pushed


async def test_a_push_with_a_lease_loses_when_someone_moved_the_branch(
    world: World, tmp_path: Path
) -> None:
    """Compare-and-swap over smart HTTP: git's --force-with-lease against the server's ref."""
    mine = tmp_path / "mine"
    commit_on_branch(world, mine, "changeflow/r13", {"index.html": "<h1>13</h1>\n"})
    leased = git("rev-parse", "HEAD", cwd=mine).stdout.strip()
    theirs = world.hub.state.push_commit(world.repository, "changeflow/r13", {"x.txt": "theirs\n"})
    (mine / "index.html").write_text("<h1>13 again</h1>\n")
    git("commit", "--quiet", "-am", "revision", cwd=mine)
    lost = git(
        "push",
        f"--force-with-lease=changeflow/r13:{leased}",
        "origin",
        "changeflow/r13",
        cwd=mine,
        check=False,
    )
    assert lost.returncode != 0 and "stale info" in lost.stderr
    assert world.repository.bare.resolve("refs/heads/changeflow/r13") == theirs


async def test_git_without_credentials_is_challenged_and_a_protected_branch_refuses_a_push(
    world: World, tmp_path: Path
) -> None:
    anonymous = git(
        "clone", world.hub.clone_url(world.repository), str(tmp_path / "a"), check=False
    )
    assert anonymous.returncode != 0
    assert ("GET", "/acme/storefront.git/info/refs", 401) in world.hub.requests

    world.hub.state.protect(world.repository, "main", Protection())
    work = tmp_path / "work"
    commit_on_branch(world, work, "main-copy", {"index.html": "<h1>x</h1>\n"})
    before = world.repository.bare.resolve("refs/heads/main")
    refused = git("push", "origin", "main-copy:main", cwd=work, check=False)
    assert refused.returncode != 0
    assert "GH006: Protected branch update failed for refs/heads/main." in refused.stderr
    assert world.repository.bare.resolve("refs/heads/main") == before


async def test_pygit2_the_products_transport_clones_and_pushes_and_sees_a_refusal(
    world: World, tmp_path: Path
) -> None:
    """libgit2 (pygit2) speaks to the stand-in as to GitHub; a refused ref does not raise, it
    arrives in push_update_reference with the server's reason."""
    token = world.token()
    refusals: list[tuple[str, str | None]] = []  # every ref's verdict

    class Callbacks(pygit2.RemoteCallbacks):
        def push_update_reference(self, refname: str, message: str | None) -> None:
            refusals.append((refname, message))

    callbacks = Callbacks(credentials=pygit2.UserPass("x-access-token", token))
    mirror = pygit2.clone_repository(
        world.hub.clone_url(world.repository),
        str(tmp_path / "mirror.git"),
        bare=True,
        callbacks=callbacks,
    )
    main = mirror.references["refs/heads/main"].target
    builder = mirror.TreeBuilder(mirror[main].tree)
    builder.insert("x.txt", mirror.create_blob(b"x\n"), pygit2.GIT_FILEMODE_BLOB)
    who = pygit2.Signature("changeflow", "changeflow@example.com")
    commit = mirror.create_commit(None, who, who, "x", builder.write(), [main])
    mirror.references.create("refs/heads/changeflow/r0", commit)
    mirror.remotes["origin"].push(["refs/heads/changeflow/r0"], callbacks=callbacks)
    assert world.repository.bare.resolve("refs/heads/changeflow/r0") == str(commit)
    assert refusals == [("refs/heads/changeflow/r0", None)]  # None: accepted

    world.hub.state.protect(world.repository, "main", Protection())
    mirror.remotes["origin"].push(["refs/heads/changeflow/r0:refs/heads/main"], callbacks=callbacks)
    assert refusals[1:] == [("refs/heads/main", "pre-receive hook declined")]
    assert world.repository.bare.resolve("refs/heads/main") == str(main)


# -- refs over REST --------------------------------------------------------------------------


async def test_refs_are_created_once_updated_fast_forward_or_forced_and_deleted(
    world: World, tmp_path: Path
) -> None:
    github = world.token_client(world.token())
    main = world.repository.bare.resolve("refs/heads/main")
    assert main is not None
    created = await github.rest.git.async_create_ref(
        "acme", "storefront", ref="refs/heads/topic", sha=main
    )
    assert created.status_code == 201 and isinstance(created.parsed_data, GitRef)

    with pytest.raises(RequestFailed) as again:
        await github.rest.git.async_create_ref(
            "acme", "storefront", ref="refs/heads/topic", sha=main
        )
    assert (again.value.response.status_code, again.value.response.json()["message"]) == (
        422,
        "Reference already exists",
    )

    # A commit that is not a descendant: refused without force, accepted with it.
    sideways = world.hub.state.push_commit(world.repository, "side", {"x.txt": "x\n"})
    advanced = world.hub.state.push_commit(world.repository, "main", {"y.txt": "y\n"})
    await github.rest.git.async_update_ref("acme", "storefront", "heads/topic", sha=advanced)
    with pytest.raises(RequestFailed) as not_forward:
        await github.rest.git.async_update_ref("acme", "storefront", "heads/topic", sha=sideways)
    assert not_forward.value.response.status_code == 422
    assert not_forward.value.response.json()["message"] == "Update is not a fast forward"
    forced = await github.rest.git.async_update_ref(
        "acme", "storefront", "heads/topic", sha=sideways, force=True
    )
    assert forced.parsed_data.object_.sha == sideways

    deleted = await github.rest.git.async_delete_ref("acme", "storefront", "heads/topic")
    assert deleted.status_code == 204
    with pytest.raises(RequestFailed) as gone:
        await github.rest.git.async_get_ref("acme", "storefront", "heads/topic")
    assert gone.value.response.status_code == 404
    assert "refs/heads/topic" not in world.repository.bare.refs()


# -- pull requests ---------------------------------------------------------------------------


async def test_a_pull_request_merges_with_the_sha_guard_into_a_real_merge_commit(
    world: World, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    first = commit_on_branch(world, work, "changeflow/r1", {"index.html": "<h1>Sale</h1>\n"})
    github = world.installation_client()
    created = await github.rest.pulls.async_create(
        "acme", "storefront", title="Sale banner", head="changeflow/r1", base="main", body="plan v1"
    )
    pull = created.parsed_data
    assert created.status_code == 201 and isinstance(pull, PullRequest)
    assert (pull.number, pull.head.sha, pull.state, pull.mergeable) == (1, first, "open", True)

    updated = await github.rest.pulls.async_update("acme", "storefront", 1, body="plan v2")
    assert updated.parsed_data.body == "plan v2"
    listed = (
        await github.rest.pulls.async_list("acme", "storefront", head="acme:changeflow/r1")
    ).parsed_data
    assert [p.number for p in listed] == [1] and isinstance(listed[0], PullRequestSimple)

    # The head moves after the client read it: the guard refuses with 409.
    second = commit_on_branch(world, work, "changeflow/r1", {"index.html": "<h1>Sale!</h1>\n"})
    with pytest.raises(RequestFailed) as moved:
        await github.rest.pulls.async_merge("acme", "storefront", 1, sha=first)
    assert moved.value.response.status_code == 409
    assert moved.value.response.json()["message"] == (
        "Head branch was modified. Review and try the merge again."
    )

    merged = await github.rest.pulls.async_merge("acme", "storefront", 1, sha=second)
    result = merged.parsed_data
    assert isinstance(result, PullRequestMergeResult) and result.merged
    bare = world.repository.bare
    assert bare.resolve("refs/heads/main") == result.sha
    parents = bare.git("log", "-1", "--format=%P", result.sha).split()
    assert parents[1] == second and len(parents) == 2
    assert bare.git("show", f"{result.sha}:index.html") == "<h1>Sale!</h1>"
    assert bare.commit_message(result.sha).startswith(
        "Merge pull request #1 from acme/changeflow/r1"
    )

    after = (await github.rest.pulls.async_get("acme", "storefront", 1)).parsed_data
    assert (after.state, after.merged) == ("closed", True)
    # API version 2026-03-10 (githubkit's) dropped merge_commit_sha; 2022-11-28 still has it.
    raw = await github.arequest(
        "GET", "/repos/acme/storefront/pulls/1", headers={"X-GitHub-Api-Version": "2022-11-28"}
    )
    assert "merge_commit_sha" not in after.model_dump(by_alias=True)
    assert raw.json()["merge_commit_sha"] == result.sha
    closed = world.hub.webhooks.of("pull_request", "closed")
    assert [d.payload["pull_request"]["merged"] for d in closed] == [True]


async def test_a_squash_merge_writes_one_commit_on_the_base(world: World, tmp_path: Path) -> None:
    head = commit_on_branch(world, tmp_path / "w", "changeflow/r2", {"index.html": "<h1>2</h1>\n"})
    github = world.token_client(world.token())
    await github.rest.pulls.async_create(
        "acme", "storefront", title="Two", head="changeflow/r2", base="main"
    )
    base = world.repository.bare.resolve("refs/heads/main")
    result = (
        await github.rest.pulls.async_merge(
            "acme", "storefront", 1, sha=head, merge_method="squash"
        )
    ).parsed_data
    bare = world.repository.bare
    assert bare.git("log", "-1", "--format=%P", result.sha).split() == [base]
    assert bare.commit_message(result.sha).startswith("Two (#1)")


async def test_branch_protection_refuses_a_merge_until_its_review_and_check_pass(
    world: World, tmp_path: Path
) -> None:
    world.hub.state.protect(
        world.repository, "main", Protection(required_checks=["ci/test"], required_approvals=1)
    )
    head = commit_on_branch(world, tmp_path / "w", "changeflow/r3", {"index.html": "<h1>3</h1>\n"})
    github = world.token_client(world.token())
    await github.rest.pulls.async_create(
        "acme", "storefront", title="Three", head="changeflow/r3", base="main"
    )

    async def refusal() -> tuple[int, str]:
        with pytest.raises(RequestFailed) as refused:
            await github.rest.pulls.async_merge("acme", "storefront", 1, sha=head)
        return refused.value.response.status_code, refused.value.response.json()["message"]

    assert await refusal() == (
        405,
        "At least 1 approving review is required by reviewers with write access.",
    )
    pull = (await github.rest.pulls.async_get("acme", "storefront", 1)).parsed_data
    assert (pull.mergeable, pull.mergeable_state) == (True, "blocked")
    world.hub.state.pulls[("acme/storefront", 1)].approvals = 1
    assert await refusal() == (405, 'Required status check "ci/test" is expected.')
    world.hub.state.report(world.repository, head, CheckScript("ci/test", outcome="failure"))
    assert await refusal() == (405, 'Required status check "ci/test" is failing.')
    world.hub.state.report(world.repository, head, CheckScript("ci/test", outcome="success"))
    pull = (await github.rest.pulls.async_get("acme", "storefront", 1)).parsed_data
    assert pull.mergeable_state == "clean"
    merged = await github.rest.pulls.async_merge("acme", "storefront", 1, sha=head)
    assert merged.parsed_data.merged


async def test_a_person_closing_the_pull_request_or_deleting_its_branch_is_seen(
    world: World, tmp_path: Path
) -> None:
    commit_on_branch(world, tmp_path / "w", "changeflow/r4", {"index.html": "<h1>4</h1>\n"})
    commit_on_branch(world, tmp_path / "w", "changeflow/r5", {"index.html": "<h1>5</h1>\n"})
    github = world.token_client(world.token())
    await github.rest.pulls.async_create(
        "acme", "storefront", title="Four", head="changeflow/r4", base="main"
    )
    await github.rest.pulls.async_create(
        "acme", "storefront", title="Five", head="changeflow/r5", base="main"
    )

    world.hub.state.close_pull_as_person(world.hub.state.pulls[("acme/storefront", 1)], "octocat")
    git("push", "--quiet", "origin", "--delete", "changeflow/r5", cwd=tmp_path / "w")

    four = (await github.rest.pulls.async_get("acme", "storefront", 1)).parsed_data
    five = (await github.rest.pulls.async_get("acme", "storefront", 2)).parsed_data
    assert (four.state, four.merged, five.state, five.merged) == ("closed", False, "closed", False)
    closed = world.hub.webhooks.of("pull_request", "closed")
    assert [(d.payload["number"], d.payload["sender"]["login"]) for d in closed] == [
        (1, "octocat"),
        (2, "changeflow[bot]"),
    ]
    # The deletion also sends `delete` (the branch's short name), which githubkit reads.
    [deleted] = world.hub.webhooks.of("delete")
    assert (deleted.payload["ref"], deleted.payload["ref_type"]) == ("changeflow/r5", "branch")
    assert deleted.payload["sender"]["login"] == "changeflow[bot]"
    github_webhooks.parse_obj("delete", deleted.payload)


# -- checks and statuses ---------------------------------------------------------------------


async def test_combined_status_is_pending_with_zero_statuses_when_only_check_runs_report(
    world: World, tmp_path: Path
) -> None:
    """The known trap: GitHub Actions reports check runs only, and the combined commit status
    of such a commit is `pending` with total_count 0 forever."""
    world.hub.state.add_check_script(world.repository, CheckScript("build", outcome="success"))
    head = commit_on_branch(world, tmp_path / "w", "changeflow/r6", {"index.html": "<h1>6</h1>\n"})
    github = world.token_client(world.token())

    runs = (await github.rest.checks.async_list_for_ref("acme", "storefront", head)).parsed_data
    assert runs.total_count == 1
    [run] = runs.check_runs
    assert isinstance(run, CheckRun)
    assert (run.name, run.status, run.conclusion) == ("build", "completed", "success")

    combined = (
        await github.rest.repos.async_get_combined_status_for_ref("acme", "storefront", head)
    ).parsed_data
    assert isinstance(combined, CombinedCommitStatus)
    assert (combined.state, combined.total_count, combined.statuses) == ("pending", 0, [])


async def test_scripted_checks_go_from_pending_to_their_outcome_on_the_stand_ins_clock(
    world: World, tmp_path: Path
) -> None:
    state = world.hub.state
    state.add_check_script(
        world.repository, CheckScript("lint", kind="status", outcome="success", after=300)
    )
    state.add_check_script(
        world.repository,
        CheckScript("e2e", outcome="failure", after=600, details_url="https://ci.example/e2e/1"),
    )
    state.add_check_script(
        world.repository, CheckScript("slow", outcome=None, branches="changeflow/*")
    )
    head = commit_on_branch(world, tmp_path / "w", "changeflow/r7", {"index.html": "<h1>7</h1>\n"})
    github = world.token_client(world.token())

    async def seen() -> tuple[str, dict[str, tuple[str, str | None]]]:
        combined = (
            await github.rest.repos.async_get_combined_status_for_ref("acme", "storefront", head)
        ).parsed_data
        runs = (await github.rest.checks.async_list_for_ref("acme", "storefront", head)).parsed_data
        return combined.state, {r.name: (r.status, r.conclusion) for r in runs.check_runs}

    assert await seen() == (
        "pending",
        {"e2e": ("in_progress", None), "slow": ("in_progress", None)},
    )
    world.hub.clock.advance(300)
    assert await seen() == (
        "success",
        {"e2e": ("in_progress", None), "slow": ("in_progress", None)},
    )
    world.hub.clock.advance(300)
    assert await seen() == (
        "success",
        {"e2e": ("completed", "failure"), "slow": ("in_progress", None)},
    )
    # A check that never reports stays in progress (within the token's hour: advancing the
    # clock further would expire the token too).
    world.hub.clock.advance(2400)
    assert (await seen())[1]["slow"] == ("in_progress", None)

    failed = [d.payload for d in world.hub.webhooks.of("check_run", "completed")]
    assert [(p["check_run"]["name"], p["check_run"]["details_url"]) for p in failed] == [
        ("e2e", "https://ci.example/e2e/1")
    ]
    # Scripts follow branches: main did not get the changeflow-only check.
    main = world.repository.bare.resolve("refs/heads/main")
    assert main is not None
    assert state.runs_for(world.repository, main) == []


async def test_commit_statuses_combine_worst_state_wins(world: World) -> None:
    github = world.token_client(world.token())
    sha = world.repository.bare.resolve("refs/heads/main")
    assert sha is not None
    created = await github.rest.repos.async_create_commit_status(
        "acme",
        "storefront",
        sha,
        state="success",
        context="ci/unit",
        target_url="https://ci.example/1",
    )
    assert created.status_code == 201 and isinstance(created.parsed_data, Status)
    await github.rest.repos.async_create_commit_status(
        "acme", "storefront", sha, state="failure", context="ci/e2e"
    )
    combined = (
        await github.rest.repos.async_get_combined_status_for_ref("acme", "storefront", "main")
    ).parsed_data
    assert (combined.state, combined.total_count) == ("failure", 2)
    # A newer status of the same context replaces the older one.
    await github.rest.repos.async_create_commit_status(
        "acme", "storefront", sha, state="success", context="ci/e2e"
    )
    combined = (
        await github.rest.repos.async_get_combined_status_for_ref("acme", "storefront", sha)
    ).parsed_data
    assert (combined.state, combined.total_count) == ("success", 2)

    # githubkit refuses a bad state before sending; the stand-in refuses it as GitHub does.
    with pytest.raises(RequestFailed) as invalid:
        await github.arequest(
            "POST", f"/repos/acme/storefront/statuses/{sha}", json={"state": "green"}
        )
    assert invalid.value.response.status_code == 422


# -- deployments -----------------------------------------------------------------------------


async def test_deployments_and_their_statuses_are_written_and_listed(
    world: World, tmp_path: Path
) -> None:
    world.hub.state.add_check_script(world.repository, CheckScript("build", outcome=None))
    head = commit_on_branch(world, tmp_path / "w", "changeflow/r8", {"index.html": "<h1>8</h1>\n"})
    github = world.token_client(world.token())

    # GitHub's own gate: with required_contexts left out, a pending check refuses the deployment.
    with pytest.raises(RequestFailed) as gated:
        await github.rest.repos.async_create_deployment(
            "acme", "storefront", ref=head, environment="staging", auto_merge=False
        )
    assert gated.value.response.status_code == 409
    assert (
        gated.value.response.json()["message"]
        == f"Conflict: Commit status checks failed for {head}."
    )

    created = await github.rest.repos.async_create_deployment(
        "acme",
        "storefront",
        ref=head,
        environment="staging",
        auto_merge=False,
        required_contexts=[],
        payload={"request": "r8"},
        description="changeflow request r8",
    )
    deployment = created.parsed_data
    assert created.status_code == 201 and isinstance(deployment, Deployment)
    assert (deployment.sha, deployment.environment, deployment.production_environment) == (
        head,
        "staging",
        False,
    )

    for state in ("in_progress", "success"):
        status = await github.rest.repos.async_create_deployment_status(
            "acme",
            "storefront",
            deployment.id,
            state=state,
            log_url="https://changeflow.example/requests/r8",
            environment_url="https://staging.shop.example",
        )
        assert status.status_code == 201 and isinstance(status.parsed_data, DeploymentStatus)
    listed = (
        await github.rest.repos.async_list_deployment_statuses("acme", "storefront", deployment.id)
    ).parsed_data
    assert [(s.state, s.environment_url) for s in listed] == [
        ("success", "https://staging.shop.example"),
        ("in_progress", "https://staging.shop.example"),
    ]
    found = (
        await github.rest.repos.async_list_deployments("acme", "storefront", environment="staging")
    ).parsed_data
    assert [d.id for d in found] == [deployment.id]
    events = [
        d.payload["deployment_status"]["state"] for d in world.hub.webhooks.of("deployment_status")
    ]
    assert events == ["in_progress", "success"]


# -- rate limits and caching -----------------------------------------------------------------


async def test_rate_limit_headers_count_down_and_limits_answer_as_github_does(
    world: World, tmp_path: Path
) -> None:
    token = world.token()
    github = world.token_client(token)
    first = await github.rest.repos.async_get("acme", "storefront")
    second = await github.rest.repos.async_get("acme", "storefront")
    assert int(first.headers["x-ratelimit-remaining"]) - 1 == int(
        second.headers["x-ratelimit-remaining"]
    )
    assert second.headers["x-ratelimit-limit"] == "5000"
    assert second.headers["x-ratelimit-used"] == "2"
    assert second.headers["x-ratelimit-resource"] == "core"
    assert int(second.headers["x-ratelimit-reset"]) > time.time()

    commit_on_branch(world, tmp_path / "w", "changeflow/r9", {"index.html": "<h1>9</h1>\n"})
    world.hub.state.limits.arm_secondary_limit("POST", "/pulls", retry_after=30, status=403)
    world.hub.state.limits.arm_secondary_limit("POST", "/pulls", retry_after=5, status=429)
    for expected_status, expected_wait in ((403, 30), (429, 5)):
        with pytest.raises(SecondaryRateLimitExceeded) as limited:
            await github.rest.pulls.async_create(
                "acme", "storefront", title="Nine", head="changeflow/r9", base="main"
            )
        assert limited.value.response.status_code == expected_status
        assert limited.value.retry_after == timedelta(seconds=expected_wait)
        assert "secondary rate limit" in limited.value.response.json()["message"]
    assert not [p for p in world.hub.state.pulls.values() if p.head_ref == "changeflow/r9"]
    created = await github.rest.pulls.async_create(
        "acme", "storefront", title="Nine", head="changeflow/r9", base="main"
    )
    assert created.status_code == 201

    world.hub.state.limits.exhaust_primary_limit(world.hub.state.tokens[token])
    with pytest.raises(PrimaryRateLimitExceeded) as exhausted:
        await github.rest.repos.async_get("acme", "storefront")
    assert exhausted.value.response.headers["x-ratelimit-remaining"] == "0"
    assert exhausted.value.response.json()["message"] == (
        f"API rate limit exceeded for installation ID {world.installation.id}."
    )


async def test_get_answers_carry_githubs_cache_headers_and_an_etag_revalidates_for_free(
    world: World,
) -> None:
    """GitHub marks GET answers `private, max-age=60` with an ETag; githubkit's default HTTP
    cache (hishel) still asks again, so a poller sees a check run change at once."""
    sha = world.repository.bare.resolve("refs/heads/main")
    assert sha is not None
    token = world.token()
    cached = world.token_client(token, http_cache=True)
    world.hub.state.report(world.repository, sha, CheckScript("build", outcome="success", after=5))

    before = (await cached.rest.checks.async_list_for_ref("acme", "storefront", sha)).parsed_data
    world.hub.clock.advance(5)
    after = (await cached.rest.checks.async_list_for_ref("acme", "storefront", sha)).parsed_data
    assert (before.check_runs[0].status, after.check_runs[0].status) == ("in_progress", "completed")

    # A conditional request with the ETag gets 304 and costs no rate limit.
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(base_url=world.hub.url, headers=headers) as http:
        full = await http.get("/repos/acme/storefront")
        assert full.headers["cache-control"] == "private, max-age=60, s-maxage=60"
        unchanged = await http.get(
            "/repos/acme/storefront", headers={"If-None-Match": full.headers["etag"]}
        )
    assert unchanged.status_code == 304
    assert unchanged.headers["x-ratelimit-used"] == full.headers["x-ratelimit-used"]


# -- webhooks --------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook endpoint on a thread: records every delivery and answers 202."""

    def __init__(self) -> None:
        received: list[Received] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/github"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


async def test_webhooks_are_signed_labelled_and_can_be_held_reordered_and_duplicated(
    world: World, receiver: Receiver
) -> None:
    hub = world.hub
    hub.webhooks.deliver_to(receiver.url)
    sha = world.repository.bare.resolve("refs/heads/main")
    assert sha is not None
    github = world.token_client(world.token())
    await github.rest.repos.async_create_commit_status(
        "acme", "storefront", sha, state="pending", context="ci"
    )
    hub.webhooks.wait_idle()

    [first] = receiver.received
    assert first.headers["x-github-event"] == "status"
    expected = (
        "sha256="
        + hmac.new(world.app.webhook_secret.encode(), first.body, hashlib.sha256).hexdigest()
    )
    assert first.headers["x-hub-signature-256"] == expected
    assert github_webhooks.verify(
        world.app.webhook_secret, first.body, first.headers["x-hub-signature-256"]
    )
    payload = json.loads(first.body)
    assert (payload["sha"], payload["state"], payload["context"]) == (sha, "pending", "ci")
    assert payload["installation"]["id"] == world.installation.id
    assert payload["repository"]["full_name"] == "acme/storefront"

    hub.webhooks.hold()
    for state in ("success", "failure"):
        await github.rest.repos.async_create_commit_status(
            "acme", "storefront", sha, state=state, context="ci"
        )
    hub.webhooks.release(order="reversed", duplicate=True)
    hub.webhooks.wait_idle()
    later = receiver.received[1:]
    assert [json.loads(r.body)["state"] for r in later] == [
        "failure",
        "failure",
        "success",
        "success",
    ]
    ids = [r.headers["x-github-delivery"] for r in later]
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]

    hub.webhooks.send_forged("status", payload)
    hub.webhooks.wait_idle()
    forged = receiver.received[-1]
    assert not github_webhooks.verify(
        world.app.webhook_secret, forged.body, forged.headers["x-hub-signature-256"]
    )


async def test_webhook_payloads_parse_as_githubkits_webhook_models(
    world: World, tmp_path: Path
) -> None:
    hub = world.hub
    hub.state.add_check_script(world.repository, CheckScript("build", outcome="success"))
    head = commit_on_branch(
        world, tmp_path / "w", "changeflow/r10", {"index.html": "<h1>10</h1>\n"}
    )
    github = world.token_client(world.token())
    await github.rest.pulls.async_create(
        "acme", "storefront", title="Ten", head="changeflow/r10", base="main"
    )
    await github.rest.repos.async_create_commit_status(
        "acme", "storefront", head, state="success", context="ci"
    )
    deployment = (
        await github.rest.repos.async_create_deployment(
            "acme",
            "storefront",
            ref=head,
            environment="staging",
            required_contexts=[],
            auto_merge=False,
        )
    ).parsed_data
    await github.rest.repos.async_create_deployment_status(
        "acme", "storefront", deployment.id, state="success"
    )
    await github.rest.pulls.async_merge("acme", "storefront", 1, sha=head)

    seen = set()
    for delivery in hub.webhooks.sent:
        event = github_webhooks.parse_obj(delivery.event, delivery.payload)  # type: ignore[arg-type]
        seen.add((delivery.event, getattr(event, "action", None)))
    assert {
        ("push", None),
        ("check_run", "created"),
        ("check_run", "completed"),
        ("check_suite", "completed"),
        ("pull_request", "opened"),
        ("pull_request", "closed"),
        ("status", None),
        ("deployment", "created"),
        ("deployment_status", "created"),
    } <= seen


# -- the OpenAPI description -----------------------------------------------------------------

OPENAPI = json.loads(
    (
        Path(__file__).parent.parent
        / "scripts"
        / "github_stand_in"
        / "openapi"
        / "github-subset.json"
    ).read_text()
)


class OpenApiCheck:
    """Validates each answer against GitHub's description of its operation and status."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.checked: set[tuple[str, int]] = set()

    async def call(
        self, method: str, template: str, path: str, **options: object
    ) -> httpx.Response:
        response = await self.http.request(method, path, **options)  # type: ignore[arg-type]
        operation = OPENAPI["paths"][template][method.lower()]
        self.checked.add((operation["operationId"], response.status_code))
        documented = operation["responses"].get(str(response.status_code))
        if documented is None:
            # Errors every endpoint may answer (auth, limits, hidden resources, validation) are
            # not listed per operation; their body is still GitHub's basic error.
            assert response.status_code in (401, 403, 404, 422, 429), (method, path, response.text)
            documented = {
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/basic-error"}}
                }
            }
        if "$ref" in documented:
            documented = self.lookup(documented["$ref"])
        content = documented.get("content", {}).get("application/json")
        if content is None and response.status_code >= 400:
            # A refusal documented without a body (delete-ref's 422) still answers GitHub's error.
            content = {"schema": {"$ref": "#/components/schemas/basic-error"}}
        if content is None:
            assert response.content == b"", (method, path)
            return response
        schema = {**content["schema"], "components": OPENAPI["components"]}
        OAS30Validator(schema, format_checker=oas30_format_checker).validate(response.json())
        return response

    @staticmethod
    def lookup(pointer: str) -> dict[str, object]:
        node = OPENAPI
        for part in pointer.removeprefix("#/").split("/"):
            node = node[part]
        return node


async def test_every_answer_matches_githubs_openapi_description(
    world: World, tmp_path: Path
) -> None:
    """Each operation the stand-in serves, in its success and its refusals, against the cut of
    GitHub's description in scripts/github_stand_in/openapi (REST API version 2022-11-28)."""
    hub, state = world.hub, world.hub.state
    now = int(time.time())
    app_jwt = jwt.encode(
        {"iss": str(world.app.id), "iat": now - 60, "exp": now + 540},
        world.app.private_key_pem,
        "RS256",
    )
    head = commit_on_branch(
        world, tmp_path / "w", "changeflow/r11", {"index.html": "<h1>11</h1>\n"}
    )
    stale = commit_on_branch(
        world, tmp_path / "w2", "changeflow/r12", {"index.html": "<h1>12</h1>\n"}
    )
    main = state.repositories["acme/storefront"].bare.resolve("refs/heads/main")
    repo = "/repos/acme/storefront"
    version = {"X-GitHub-Api-Version": "2022-11-28"}

    async with httpx.AsyncClient(
        base_url=hub.url, headers={**version, "Authorization": f"Bearer {app_jwt}"}
    ) as http:
        check = OpenApiCheck(http)
        await check.call("GET", "/app", "/app")
        tokens = f"/app/installations/{world.installation.id}/access_tokens"
        token = (
            await check.call("POST", "/app/installations/{installation_id}/access_tokens", tokens)
        ).json()["token"]
        await check.call(
            "POST",
            "/app/installations/{installation_id}/access_tokens",
            tokens,
            headers={"Authorization": "Bearer not.a.jwt"},
        )
        missing = "/app/installations/1/access_tokens"
        assert (
            await check.call("POST", "/app/installations/{installation_id}/access_tokens", missing)
        ).status_code == 404

        http.headers["Authorization"] = f"token {token}"
        await check.call("GET", "/repos/{owner}/{repo}", repo)
        await check.call("GET", "/repos/{owner}/{repo}", "/repos/acme/nothing")

        ref_one = "/repos/{owner}/{repo}/git/ref/{ref}"
        ref_many = "/repos/{owner}/{repo}/git/refs/{ref}"
        await check.call("GET", ref_one, f"{repo}/git/ref/heads/main")
        await check.call("GET", ref_one, f"{repo}/git/ref/heads/nothing")
        for expected in (201, 422):
            created = await check.call(
                "POST",
                "/repos/{owner}/{repo}/git/refs",
                f"{repo}/git/refs",
                json={"ref": "refs/heads/t", "sha": main},
            )
            assert created.status_code == expected
        assert (
            await check.call("PATCH", ref_many, f"{repo}/git/refs/heads/t", json={"sha": stale})
        ).status_code == 200
        refused = await check.call(
            "PATCH", ref_many, f"{repo}/git/refs/heads/t", json={"sha": head}
        )
        assert refused.status_code == 422
        assert (await check.call("DELETE", ref_many, f"{repo}/git/refs/heads/t")).status_code == 204
        assert (await check.call("DELETE", ref_many, f"{repo}/git/refs/heads/t")).status_code == 422

        pulls, pull = "/repos/{owner}/{repo}/pulls", "/repos/{owner}/{repo}/pulls/{pull_number}"
        merge = "/repos/{owner}/{repo}/pulls/{pull_number}/merge"
        body = {"title": "Eleven", "head": "changeflow/r11", "base": "main", "body": "plan"}
        assert (await check.call("POST", pulls, f"{repo}/pulls", json=body)).status_code == 201
        assert (await check.call("POST", pulls, f"{repo}/pulls", json=body)).status_code == 422
        await check.call("GET", pulls, f"{repo}/pulls", params={"state": "all"})
        await check.call("GET", pull, f"{repo}/pulls/1")
        await check.call("GET", pull, f"{repo}/pulls/99")
        await check.call("PATCH", pull, f"{repo}/pulls/1", json={"body": "plan v2"})
        assert (await check.call("GET", merge, f"{repo}/pulls/1/merge")).status_code == 404

        checks = "/repos/{owner}/{repo}/commits/{ref}/check-runs"
        state.report(world.repository, head, CheckScript("build", outcome="success"))
        await check.call("GET", checks, f"{repo}/commits/{head}/check-runs")
        await check.call(
            "GET", "/repos/{owner}/{repo}/commits/{ref}/status", f"{repo}/commits/{head}/status"
        )
        status = await check.call(
            "POST",
            "/repos/{owner}/{repo}/statuses/{sha}",
            f"{repo}/statuses/{head}",
            json={"state": "success", "context": "ci", "target_url": "https://ci.example/1"},
        )
        assert status.status_code == 201
        await check.call(
            "POST",
            "/repos/{owner}/{repo}/statuses/{sha}",
            f"{repo}/statuses/{head}",
            json={"state": "green"},
        )
        await check.call(
            "GET", "/repos/{owner}/{repo}/commits/{ref}/statuses", f"{repo}/commits/{head}/statuses"
        )

        deployments = "/repos/{owner}/{repo}/deployments"
        one, its_statuses = (
            f"{deployments}/{{deployment_id}}",
            f"{deployments}/{{deployment_id}}/statuses",
        )
        state.report(world.repository, stale, CheckScript("build", outcome=None))
        gated = await check.call(
            "POST",
            deployments,
            f"{repo}/deployments",
            json={"ref": stale, "environment": "staging"},
        )
        assert gated.status_code == 409
        created = await check.call(
            "POST",
            deployments,
            f"{repo}/deployments",
            json={
                "ref": head,
                "environment": "staging",
                "required_contexts": [],
                "auto_merge": False,
            },
        )
        deployment_id = created.json()["id"]
        await check.call("GET", deployments, f"{repo}/deployments")
        await check.call("GET", one, f"{repo}/deployments/{deployment_id}")
        await check.call("GET", one, f"{repo}/deployments/1")
        await check.call(
            "POST",
            its_statuses,
            f"{repo}/deployments/{deployment_id}/statuses",
            json={
                "state": "success",
                "log_url": "https://changeflow.example/r11",
                "environment_url": "https://staging.example",
            },
        )
        await check.call(
            "POST",
            its_statuses,
            f"{repo}/deployments/{deployment_id}/statuses",
            json={"state": "nope"},
        )
        await check.call("GET", its_statuses, f"{repo}/deployments/{deployment_id}/statuses")

        # Merge: the sha guard (409), protection (405), then the merge (200) and its check (204).
        assert (
            await check.call("PUT", merge, f"{repo}/pulls/1/merge", json={"sha": stale})
        ).status_code == 409
        state.protect(world.repository, "main", Protection(required_approvals=1))
        assert (
            await check.call("PUT", merge, f"{repo}/pulls/1/merge", json={"sha": head})
        ).status_code == 405
        state.pulls[("acme/storefront", 1)].approvals = 1
        assert (
            await check.call("PUT", merge, f"{repo}/pulls/1/merge", json={"sha": head})
        ).status_code == 200
        assert (await check.call("GET", merge, f"{repo}/pulls/1/merge")).status_code == 204
        await check.call("GET", pull, f"{repo}/pulls/1")

    served = {
        operation["operationId"]
        for path in OPENAPI["paths"].values()
        for operation in path.values()
    }
    assert {operation for operation, _ in check.checked} == served


def test_no_product_package_imports_the_stand_in() -> None:
    """The stand-in is a tool of the tests and the demo: the product never reaches it."""
    root = Path(__file__).parent.parent
    importers = [
        str(source.relative_to(root))
        for package in ("models", "infra", "activities", "workflows", "client", "workers", "cli")
        for source in (root / package).rglob("*.py")
        if "github_stand_in" in source.read_text()
    ]
    assert importers == []
