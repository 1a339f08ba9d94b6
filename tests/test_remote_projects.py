"""Projects whose repository is a git remote (issue 19 part 1): a plain remote served by git's
own `git http-backend` (the GitHub stand-in used through git alone, Basic auth with a token) and
`file://` remotes, with real workers, Temporal and PostgreSQL. What a user sees is asserted on
the remote itself: its branches, what they hold, and that no token shows anywhere."""

import asyncio
import dataclasses
import logging
import re
import shlex
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.change_engine import RepositoryError
from activities.deploy_target import GitDeployTarget, ReleaseConflict
from activities.deployments import DeploymentActivities
from activities.git_store import (
    RELEASE_REFS,
    fast_forward,
    move_ref,
    release_ref,
    resolve_commit,
)
from activities.releases import ReleaseActivities
from activities.remote_repository import (
    Repositories,
    RepositoryUrlInvalid,
    Transport,
    parse_repository,
    redact,
)
from cli import tenancy
from cli.tenancy import Refused
from client.lifecycle import LifecycleClient
from infra.settings import Settings
from models import (
    ChangeJob,
    ChangeJobKind,
    ChangeJobStatus,
    Deployment,
    DeploymentEnvironment,
    DeploymentPlan,
    DeploymentStatus,
    Project,
    PromptRequest,
    PromptStatus,
)
from models.db import SessionFactory
from scripts.github_stand_in.server import GitHubStandIn, github_stand_in
from scripts.sample_repo import FAILS_IN_PRODUCTION_PROMPT, FAILS_IN_STAGING_PROMPT
from tests.cli_support import ROOT, ok, refused
from tests.factories import make_tenant
from tests.lifecycle_support import (
    git,
    human_policy,
    make_shop,
    plan_awaiting_approval,
    push_config,
    submit,
)
from tests.process_support import WorkerProcess
from tests.remote_support import (
    connect_git,
    file_remote_shop,
    history_text,
    http_remote_shop,
    person_pushes,
    remote_branches,
    remote_config,
    remote_settings,
    tree,
)
from tests.workers import running_workers, test_settings
from workflows.contracts.deployment import RecordDeployment, RecordVerdict, ReleaseStep
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import PromptRequestResult

pytestmark = pytest.mark.asyncio(loop_scope="session")

OUTCOME_WITHIN_S = 90

PROMPTS = [
    "set theme to dark",
    "set free_shipping_threshold to 75",
    "set store_name to Corner Shop Plus",
]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[GitHubStandIn]:
    with github_stand_in(tmp_path / "hub") as stand_in:
        yield stand_in


def settings_for(task_queue: str, deploy_queue: str, tmp_path: Path, name: str = "w") -> Settings:
    base = test_settings(
        task_queue=task_queue,
        deploy_task_queue=deploy_queue,
        workspace_dir=tmp_path / f"{name}-workspace",
    )
    return remote_settings(base, tmp_path / f"{name}-cache")


async def outcome(lifecycle: LifecycleClient, request_id: uuid.UUID) -> PromptRequestResult:
    try:
        async with asyncio.timeout(OUTCOME_WITHIN_S):
            return await lifecycle.wait_for_outcome(request_id)
    except TimeoutError:
        status = await lifecycle.status(request_id)
        raise AssertionError(f"no outcome; the request is at {status!r}") from None


# --- addresses ---------------------------------------------------------------------------


async def test_every_git_address_form_is_understood() -> None:
    forms = {
        "https://git.example.com/acme/shop.git": Transport.HTTP,
        "http://127.0.0.1:8080/acme/shop.git": Transport.HTTP,
        "ssh://git@git.example.com:2222/acme/shop.git": Transport.SSH,
        "git@github.com:acme/shop.git": Transport.SSH,
        "file:///srv/git/shop.git": Transport.FILE,
        "git://127.0.0.1/shop.git": Transport.GIT,
        "/srv/git/shop": Transport.LOCAL,
        "relative/shop": Transport.LOCAL,
    }
    assert {text: parse_repository(text).transport for text in forms} == forms
    assert parse_repository("git@github.com:acme/shop.git").user == "git"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("https://bot:ghp_secret123456@github.com/acme/shop.git", "carries a password"),
        ("https://bot@github.com/acme/shop.git", "names a user"),
        ("ftp://example.com/shop.git", "not a git transport"),
        ("https:///acme/shop.git", "names no host"),
        ("https://github.com/", "names no repository"),
        ("https://github.com:port/acme/shop.git", "not a valid URL"),
        ("file://otherhost/srv/shop.git", "file:///absolute/path"),
        ("https://github.com/acme/shop.git?token=x", "no ? or #"),
        ("/srv/git/my shop", "spaces"),
        ("", "empty"),
    ],
)
async def test_a_malformed_address_is_refused_with_the_reason_and_no_secret(
    text: str, says: str
) -> None:
    with pytest.raises(RepositoryUrlInvalid, match=re.escape(says)) as refused:
        parse_repository(text)
    assert "ghp_secret123456" not in str(refused.value)


async def test_redact_blots_out_credentials_in_any_url_of_a_message() -> None:
    message = "fetch https://x-access-token:ghs_abcdef123@127.0.0.1/acme/shop.git failed"
    assert redact(message) == "fetch https://***@127.0.0.1/acme/shop.git failed"


async def test_project_create_takes_every_url_form_and_refuses_a_malformed_one(
    sessions: SessionFactory,
) -> None:
    tenant = await make_tenant(sessions, name="Remote Co")
    async with sessions() as session:
        for index, url in enumerate(
            ["https://git.example.com/acme/shop.git", "git@github.com:acme/shop.git"]
        ):
            project = await tenancy.create_project(
                session=session, tenant=tenant, name=f"shop {index}", repo_url=url
            )
            assert project.repo_url == url
        with pytest.raises(Refused) as refused:
            await tenancy.create_project(
                session=session,
                tenant=tenant,
                name="leaky",
                repo_url="https://bot:ghp_secret123456@github.com/acme/shop.git",
            )
    assert refused.value.error_type == ErrorType.INVALID_REPOSITORY_URL
    assert "ghp_secret123456" not in str(refused.value)
    async with sessions() as session:
        query = select(Project.name).where(Project.tenant_id == tenant.id)
        names = (await session.exec(query)).all()
    assert sorted(names) == ["shop 0", "shop 1"]  # the refused one changed nothing


# --- the mirror and compare-and-swap pushes ------------------------------------------------


async def test_a_missing_or_damaged_mirror_is_rebuilt_from_the_remote(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    remote = await file_remote_shop(sessions, tmp_path)
    project = remote.shop.project
    repositories = Repositories(tmp_path / "cache", sessions)
    head = git(remote.bare, "rev-parse", "main")

    mirror = await repositories.local(project)
    assert await resolve_commit(mirror, "main") == head

    shutil.rmtree(mirror)  # an operator cleaned the cache
    assert await resolve_commit(await repositories.local(project), "main") == head

    pushed = person_pushes(remote, theme="dark")
    for pack in (mirror / "objects" / "pack").iterdir():
        pack.unlink()  # the mirror's objects are gone, its refs remain
    assert await resolve_commit(await repositories.local(project), "main") == pushed

    (mirror / "HEAD").write_text("garbage\n")  # not a repository any more
    assert await resolve_commit(await repositories.local(project), "main") == pushed
    assert not list(mirror.parent.glob(".*.new"))  # no half-built mirror left behind


async def test_a_ref_moved_on_the_remote_refuses_the_push_and_the_mirror_learns_where_it_went(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    remote = await file_remote_shop(sessions, tmp_path)
    repositories = Repositories(tmp_path / "cache", sessions)
    mirror = await repositories.local(remote.shop.project)
    base = git(remote.bare, "rev-parse", "main")
    target = GitDeployTarget(tmp_path / "workspace")
    released = await target.release(
        repo=mirror, environment="staging", commit_sha=base, deployment_id=uuid.uuid4()
    )
    assert git(remote.bare, "rev-parse", "env/staging") == released.commit_sha == base

    pushed = person_pushes(remote, theme="dark")  # the mirror has not fetched it
    # The mirror still believes main is at `base`: the push expecting it is refused.
    assert not await move_ref(mirror, "refs/heads/main", base, base)
    assert git(remote.bare, "rev-parse", "main") == pushed
    assert await resolve_commit(mirror, "main") == pushed  # learnt from the refusal
    # A fast-forward to what the remote holds now goes through, by compare-and-swap.
    assert await fast_forward(mirror, "main", pushed)

    # Someone moves env/staging on the remote between a worker's fetch and its release.
    elsewhere = person_pushes(remote, theme="light")
    git(remote.bare, "update-ref", "refs/heads/env/staging", elsewhere)
    with pytest.raises(ReleaseConflict, match="moved"):
        await target.release(
            repo=mirror, environment="staging", commit_sha=pushed, deployment_id=uuid.uuid4()
        )
    assert git(remote.bare, "rev-parse", "env/staging") == elsewhere


async def test_wrong_credentials_are_refused_without_echoing_them(
    sessions: SessionFactory, tmp_path: Path, hub: GitHubStandIn, task_queue: str
) -> None:
    settings = settings_for(task_queue, f"{task_queue}-deploy", tmp_path)
    remote = await http_remote_shop(sessions, tmp_path, hub, settings)
    wrong = "github_pat_not_the_token_0123456789"
    async with sessions() as session:
        await session.exec(select(Project))  # the project row as created
    await connect_git(sessions, settings, remote.shop, {"token": wrong})  # the newest wins
    from workers.registry import connector_clients

    store, _ = connector_clients(settings, sessions)
    repositories = Repositories(tmp_path / "cache", sessions, store)
    with pytest.raises(RepositoryError) as refused:
        await repositories.local(remote.shop.project)
    assert "refused the project's git credentials" in str(refused.value)
    assert wrong not in str(refused.value) and "github_pat" not in str(refused.value)


# --- lifecycles on remote projects -------------------------------------------------------


async def test_three_requests_in_a_row_on_a_smart_http_remote_all_land_there_and_no_token_shows(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    hub: GitHubStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_for(task_queue, deploy_queue, tmp_path)
    remote = await http_remote_shop(sessions, tmp_path, hub, settings)
    assert remote.token is not None
    results = []
    async with running_workers(client, sessions, settings):
        for prompt in PROMPTS:
            result = await outcome(lifecycle, await submit(lifecycle, remote.shop, prompt))
            assert result.status is PromptStatus.COMPLETED, result.reason
            assert tree(remote, "main") == tree(remote, "env/production")
            results.append(result)
        histories = [
            await history_text(client, prompt_request_workflow_id(r.prompt_request_id), settings)
            for r in results
        ]

    production = remote_config(remote, "env/production")
    assert (
        production["theme"],
        production["free_shipping_threshold"],
        production["store_name"],
    ) == ("dark", 75, "Corner Shop Plus")
    assert remote_config(remote, "main") == production
    assert git(remote.bare, "rev-parse", "main") == results[-1].commit_sha
    # Each request's branch went when the request ended: only the environments remain.
    assert remote_branches(remote) == ["env/production", "env/staging", "main"]
    # The token is nowhere: not in the histories, the logs, the rows' errors or the URL.
    assert all(str(r.prompt_request_id) in h for r, h in zip(results, histories, strict=True))
    assert all(remote.token not in h for h in histories)
    assert remote.token not in caplog.text
    assert remote.token not in remote.shop.project.repo_url
    async with sessions() as session:
        errors = (await session.exec(select(ChangeJob.error))).all()
    assert all(remote.token not in (e or "") for e in errors)


async def test_a_push_to_the_remote_between_plan_and_approval_is_kept_and_the_change_rebased(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    remote = await file_remote_shop(sessions, tmp_path, policy=human_policy())
    shop = remote.shop
    settings = settings_for(task_queue, deploy_queue, tmp_path)
    async with running_workers(client, sessions, settings):
        request_id = await submit(lifecycle, shop, "set theme to dark")
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        pushed = person_pushes(remote, store_name="Corner Shop & Co")
        for admin in shop.admins:
            await lifecycle.approve(request_id, user_id=admin.id, content_hash=plan.content_hash)
        result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert result.content_hash == plan.content_hash  # same changed lines: no new approval
    assert git(remote.bare, "rev-parse", f"{result.commit_sha}^") == pushed
    production = remote_config(remote, "env/production")
    assert (production["theme"], production["store_name"]) == ("dark", "Corner Shop & Co")
    assert tree(remote, "main") == tree(remote, "env/production")
    assert remote_branches(remote) == ["env/production", "env/staging", "main"]


async def test_an_operator_rollback_on_a_remote_project_reverts_production_and_main_there(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    remote = await file_remote_shop(sessions, tmp_path)
    shop = remote.shop
    settings = settings_for(task_queue, deploy_queue, tmp_path)
    async with running_workers(client, sessions, settings):
        first = await outcome(lifecycle, await submit(lifecycle, shop, PROMPTS[0]))
        second = await outcome(lifecycle, await submit(lifecycle, shop, PROMPTS[1]))
        assert [first.status, second.status] == [PromptStatus.COMPLETED] * 2
        target = next(
            d.deployment_id
            for d in first.deployments
            if d.environment is DeploymentEnvironment.PRODUCTION
        )
        rollback_id = await lifecycle.roll_back(
            tenant_id=shop.tenant.id, target_deployment_id=target, reason="too expensive"
        )
        async with asyncio.timeout(OUTCOME_WITHIN_S):
            restored = await lifecycle.rollback_result(rollback_id)

    assert restored.status is DeploymentStatus.SUCCEEDED, restored.verification_output
    assert git(remote.bare, "rev-parse", "env/production") == first.commit_sha
    assert tree(remote, "main") == tree(remote, "env/production")
    assert git(remote.bare, "rev-parse", "main^") == second.commit_sha  # a revert on top
    assert remote_config(remote, "main")["free_shipping_threshold"] == 50


async def test_a_released_commit_survives_gc_on_the_remote_and_a_rollback_restores_it(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    hub: GitHubStandIn,
) -> None:
    """A request verified in staging but failed in production leaves its commit on no branch
    once its own is deleted and staging moves on: the release refs keep it through `git gc`."""
    settings = settings_for(task_queue, deploy_queue, tmp_path)
    remote = await http_remote_shop(sessions, tmp_path, hub, settings)
    async with running_workers(client, sessions, settings):
        failed = await outcome(
            lifecycle, await submit(lifecycle, remote.shop, FAILS_IN_PRODUCTION_PROMPT)
        )
        shipped = await outcome(lifecycle, await submit(lifecycle, remote.shop, PROMPTS[0]))
        assert failed.status is PromptStatus.ROLLED_BACK, failed.reason
        assert shipped.status is PromptStatus.COMPLETED, shipped.reason
        assert failed.commit_sha is not None
        # On no branch of the remote any more: only a release ref holds it.
        holders = git(remote.bare, "for-each-ref", "--contains", failed.commit_sha)
        assert "refs/heads/" not in holders
        # Every verified release is kept on the remote, at the commit it released; the failed
        # production release is no rollback target: the next verified one pruned its ref (its
        # commit is the staging release's, kept there).
        kept = dict(
            line.split()
            for line in git(
                remote.bare, "for-each-ref", "--format=%(refname) %(objectname)", RELEASE_REFS
            ).splitlines()
        )
        async with sessions() as session:
            query = select(Deployment).where(Deployment.project_id == remote.shop.project.id)
            deployments = (await session.exec(query)).all()
        assert len(deployments) == 5  # two stagings, two productions, one automatic rollback
        assert kept == {release_ref(d.id): d.commit_sha for d in deployments if d.verified_at}
        # Garbage collection on the remote and on the worker's mirror keeps every release.
        git(remote.bare, "gc", "--quiet", "--prune=now")
        for mirror in (tmp_path / "w-cache").glob("*.git"):
            git(mirror, "gc", "--quiet", "--prune=now")
        git(remote.bare, "cat-file", "-e", f"{failed.commit_sha}^{{commit}}")

        staging = next(
            d.deployment_id
            for d in failed.deployments
            if d.environment is DeploymentEnvironment.STAGING
        )
        rollback_id = await lifecycle.roll_back(
            tenant_id=remote.shop.tenant.id, target_deployment_id=staging, reason="try it again"
        )
        async with asyncio.timeout(OUTCOME_WITHIN_S):
            restored = await lifecycle.rollback_result(rollback_id)

    assert restored.status is DeploymentStatus.SUCCEEDED, restored.verification_output
    assert git(remote.bare, "rev-parse", "env/staging") == failed.commit_sha
    assert remote_config(remote, "env/staging")["debug"] is True
    assert git(remote.bare, "rev-parse", "env/production") == shipped.commit_sha


async def test_a_local_project_keeps_its_releases_through_gc_too(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    shop = await make_shop(sessions, tmp_path)
    repo = Path(shop.project.repo_url)
    base = git(repo, "rev-parse", "main")
    git(repo, "branch", "side", "main")
    side = push_config(repo, "side", theme="dark")
    target = GitDeployTarget(tmp_path / "workspace")
    old, new = uuid.uuid4(), uuid.uuid4()
    await target.release(repo=repo, environment="staging", commit_sha=side, deployment_id=old)
    await target.release(repo=repo, environment="staging", commit_sha=base, deployment_id=new)
    git(repo, "branch", "-D", "side")  # the request's branch, deleted when the request ended
    git(repo, "reflog", "expire", "--expire=now", "--all")  # nor does a reflog keep it
    git(repo, "gc", "--quiet", "--prune=now")

    assert git(repo, "rev-parse", release_ref(old)) == side
    await target.rollback(
        repo=repo, environment="staging", to_commit_sha=side, deployment_id=uuid.uuid4()
    )
    assert git(repo, "rev-parse", "env/staging") == side
    # A release ref never moves: the same deployment releasing another commit is a conflict.
    with pytest.raises(ReleaseConflict, match="already released"):
        await target.release(repo=repo, environment="staging", commit_sha=base, deployment_id=old)
    assert git(repo, "rev-parse", release_ref(old)) == side


# --- a fleet with no shared disk -----------------------------------------------------------


class HeldPushes:
    """Holds every push the stand-in receives until released: a worker can be killed while
    its push is on the wire."""

    def __init__(self, hub: GitHubStandIn) -> None:
        self.arrived = threading.Event()
        self.released = threading.Event()
        serve = hub.git.serve

        def held(method: str, path: str, *args: Any) -> Any:
            if path.endswith("/git-receive-pack") and not self.released.is_set():
                self.arrived.set()
                self.released.wait(120)
            return serve(method, path, *args)

        hub.git.serve = held  # type: ignore[method-assign]


def fleet_env(
    base: dict[str, str], settings: Settings, tmp_path: Path, name: str
) -> dict[str, str]:
    """A worker host of its own: its own workspace, data and repository cache folders."""
    assert settings.credential_keys is not None
    return base | {
        "CHANGEFLOW_WORKSPACE_DIR": str(tmp_path / name / "workspace"),
        "CHANGEFLOW_DATA_DIR": str(tmp_path / name / "data"),
        "CHANGEFLOW_REPOSITORY_CACHE_DIR": str(tmp_path / name / "repositories"),
        "CHANGEFLOW_CREDENTIAL_KEYS": settings.credential_keys.get_secret_value(),
    }


async def test_two_workers_with_no_shared_folder_serve_one_project_and_one_dies_mid_push(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    worker_env: dict[str, str],
    tmp_path: Path,
    hub: GitHubStandIn,
) -> None:
    settings = settings_for(task_queue, f"{task_queue}-deploy", tmp_path)
    remote = await http_remote_shop(sessions, tmp_path, hub, settings, policy=human_policy())
    lifecycle = LifecycleClient(
        client, task_queue=task_queue, deploy_task_queue=f"{task_queue}-deploy"
    )
    first = WorkerProcess(fleet_env(worker_env, settings, tmp_path, "host-a"), tmp_path / "a.log")
    second = WorkerProcess(fleet_env(worker_env, settings, tmp_path, "host-b"), tmp_path / "b.log")
    first.start()
    try:
        request_id = await submit(lifecycle, remote.shop, PROMPTS[0])
        _, plan = await plan_awaiting_approval(lifecycle, request_id, within=120)
        pushes = HeldPushes(hub)
        for admin in remote.shop.admins:
            await lifecycle.approve(request_id, user_id=admin.id, content_hash=plan.content_hash)
        # Host A applies and pushes the request's branch: it dies with the push on the wire.
        assert await asyncio.to_thread(pushes.arrived.wait, 60)
        first.kill()
        pushes.released.set()
        second.start()  # host B has never seen the project: it makes its mirror from the remote
        async with asyncio.timeout(180):
            result = await lifecycle.wait_for_outcome(request_id)
    finally:
        pushes_released = locals().get("pushes")
        if pushes_released is not None:
            pushes_released.released.set()
        first.stop()
        second.stop()

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert remote_config(remote, "env/production")["theme"] == "dark"
    assert tree(remote, "main") == tree(remote, "env/production")
    assert remote_branches(remote) == ["env/production", "env/staging", "main"]
    # Each host worked in its own mirror; A's died with the push, B's served the rest.
    assert list((tmp_path / "host-a" / "repositories").glob("*.git"))
    assert list((tmp_path / "host-b" / "repositories").glob("*.git"))
    assert remote.token is not None
    for log in ("a.log", "b.log"):
        assert remote.token not in (tmp_path / log).read_text()


def on_host(sessions: SessionFactory, host: Path) -> ReleaseActivities:
    """The release activities of a worker host: its own workspace and repository cache."""
    return ReleaseActivities(
        sessions=sessions,
        target=GitDeployTarget(host / "workspace"),
        repositories=Repositories(host / "repositories", sessions),
    )


async def test_a_check_that_passed_is_not_run_again_by_a_retry_on_another_host(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    """Host A runs the check to its end and dies before reporting it; the retry lands on host
    B, whose disk never saw the check: it returns the verdict and the check does not run twice."""
    remote = await file_remote_shop(sessions, tmp_path)
    runs = tmp_path / "check-runs"
    async with sessions() as session:
        project = await session.get(Project, remote.shop.project.id)
        assert project is not None
        project.check_command = f"echo ran >> {runs} && python check.py"
        request = PromptRequest(tenant_id=project.tenant_id, project_id=project.id, prompt="p")
        session.add_all([project, request])
        await session.flush()
        plan = DeploymentPlan(tenant_id=project.tenant_id, prompt_request_id=request.id)
        session.add(plan)
        await session.commit()
    step = ReleaseStep(
        deployment_id=uuid.uuid4(),
        tenant_id=plan.tenant_id,
        project_id=remote.shop.project.id,
        plan_id=plan.id,
        environment=DeploymentEnvironment.STAGING,
        commit_sha=git(remote.bare, "rev-parse", "main"),
    )
    await ActivityEnvironment().run(
        DeploymentActivities(sessions).record_deployment,
        RecordDeployment(
            **step.model_dump(include={"deployment_id", "tenant_id", "project_id", "plan_id"}),
            environment=step.environment,
            commit_sha=step.commit_sha,
            workflow_id="deployment-x",
        ),
    )
    host_a, host_b = on_host(sessions, tmp_path / "a"), on_host(sessions, tmp_path / "b")
    attempt = ActivityEnvironment()
    attempt.info = dataclasses.replace(attempt.info, workflow_id="deployment-x")
    await attempt.run(host_a.release_deployment, step)
    passed = await attempt.run(host_a.run_check, step)  # its answer never reaches the server
    assert passed.ok, passed.output

    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(attempt.info, attempt=2)
    again = await retry.run(host_b.run_check, step)
    recorded = await retry.run(host_b.record_verdict, RecordVerdict(step=step, verdict=again))

    assert again == passed == recorded
    assert runs.read_text().splitlines() == ["ran"]  # once, on host A
    assert not list((tmp_path / "b" / "workspace").rglob("*-verify.log"))
    async with sessions() as session:
        row = await session.get(Deployment, step.deployment_id)
        query = select(ChangeJob).where(ChangeJob.deployment_id == step.deployment_id)
        jobs = (await session.exec(query)).all()
    assert row is not None and row.verification_output == passed.output
    validation = [j for j in jobs if j.kind is ChangeJobKind.VALIDATION]
    assert [j.status for j in validation] == [ChangeJobStatus.SUCCEEDED]


async def test_a_remote_project_and_its_git_credentials_from_the_command_line(
    env: dict[str, str], task_queue: str, tmp_path: Path, hub: GitHubStandIn
) -> None:
    settings = settings_for(task_queue, f"{task_queue}-deploy", tmp_path)
    assert settings.credential_keys is not None
    env["CHANGEFLOW_CREDENTIAL_KEYS"] = settings.credential_keys.get_secret_value()
    repository = hub.create_repository("acme", "storefront")
    token = hub.state.create_personal_token("changeflow-bot", [repository.full_name]).value
    slug = (await ok(env, "tenant", "create", "Corner Shop", "--json")).json["slug"]

    await refused(env, "InvalidRepositoryUrl", "project", "create", "Storefront", "-t", slug,
                  "--repo", f"http://bot:{token}@127.0.0.1/acme/storefront.git")  # fmt: skip
    # The README's two commands, its example URL and tenant replaced by the stand-in's.
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Projects on a git remote") :]
    start = section.index("```sh\n") + 6
    block = section[start : section.index("\n```", start)]
    create, connect = (
        shlex.split(
            line.replace("https://git.example.com/acme/storefront.git", hub.clone_url(repository))
        )
        for line in block.splitlines()
    )
    assert create[:2] == ["changeflow", "project"] and connect[0] == "GIT_TOKEN=..."
    created = await ok(env, *[slug if a == "corner-shop" else a for a in create[1:]], "--json")
    assert created.json["repo_url"] == hub.clone_url(repository)
    connect = [slug if a == "corner-shop" else a for a in connect[2:]]

    wrong = await ok({**env, "GIT_TOKEN": "github_pat_wrong_0123456789"}, *connect, "--json")
    assert wrong.json["status"] == "error"
    assert "refused the project's git credentials" in wrong.json["last_error"]
    assert "github_pat_wrong" not in wrong.out + wrong.err
    connected = await ok({**env, "GIT_TOKEN": token}, *connect, "--json")
    assert connected.json["status"] == "active", connected.json["last_error"]
    assert connected.json["kind"] == "git"
    assert token not in connected.out + connected.err


async def test_a_local_project_keeps_no_request_branch_once_its_requests_end(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    """Request branches used to accumulate, one per request: shipped or failed, each goes."""
    shop = await make_shop(sessions, tmp_path)
    settings = settings_for(task_queue, deploy_queue, tmp_path)
    async with running_workers(client, sessions, settings):
        shipped = await outcome(lifecycle, await submit(lifecycle, shop, PROMPTS[0]))
        failed = await outcome(lifecycle, await submit(lifecycle, shop, FAILS_IN_STAGING_PROMPT))

    assert shipped.status is PromptStatus.COMPLETED, shipped.reason
    assert failed.status in (PromptStatus.FAILED, PromptStatus.ROLLED_BACK), failed.reason
    assert failed.commit_sha is not None  # it was applied: its branch existed
    branches = git(shop.project.repo_url, "for-each-ref", "--format=%(refname:short)", "refs/heads")
    assert sorted(branches.splitlines()) == ["env/production", "env/staging", "main"]
