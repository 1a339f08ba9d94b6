"""GitHub projects through the whole lifecycle (issue 19 part 2): a project with a `github`
connector ships each request as a pull request on the GitHub stand-in (scripts/github_stand_in/),
verified by the tenant's own checks as GitHub Deployments, merged by production. Real workers,
Temporal and PostgreSQL; what a user sees is asserted on the stand-in: its pull requests, its
deployments and their statuses, its branches and what they hold."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.connectors import ConnectorService
from client.lifecycle import LifecycleClient, LifecycleRefused
from infra.settings import Settings
from models import DeploymentEnvironment, DeploymentStatus, Project, PromptStatus
from models.db import SessionFactory
from models.projects import ConnectorKind
from scripts.github_stand_in.records import CheckScript, Protection, PullRequest
from tests.github_support import GitHubWorld
from tests.lifecycle_support import Shop, git, make_shop, submit, wait_for_status
from tests.remote_support import history_text
from tests.test_github_webhooks import KEYS, webhooks_process
from tests.workers import running_workers, test_settings
from workers.registry import connector_clients
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import PromptRequestResult

pytestmark = pytest.mark.asyncio(loop_scope="session")

OUTCOME_WITHIN_S = 120
ENVIRONMENTS = ["env/production", "env/staging", "main"]
# The request asked Temporal to cancel its deployment child (an accepted cancel).
CANCEL_CHILD = EventType.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED


@dataclass
class GitHubShop:
    shop: Shop
    world: GitHubWorld
    settings: Settings
    connector_id: uuid.UUID

    @property
    def bare(self) -> Path:
        return self.world.repository.bare.path

    def config(self, branch: str) -> dict[str, Any]:
        return json.loads(git(self.bare, "show", f"{branch}:config.json"))  # type: ignore[no-any-return]

    def tree(self, branch: str) -> str:
        return git(self.bare, "rev-parse", f"{branch}^{{tree}}")

    def head(self, branch: str) -> str:
        return git(self.bare, "rev-parse", branch)

    def branches(self) -> list[str]:
        listing = git(self.bare, "for-each-ref", "--format=%(refname:short)", "refs/heads")
        return sorted(listing.splitlines())

    def pulls(self) -> list[PullRequest]:
        name = self.world.repository.full_name
        state = self.world.hub.state
        return [pull for (repo, _), pull in sorted(state.pulls.items()) if repo == name]

    def deployments(self) -> list[tuple[str, str, list[str]]]:
        """Each GitHub deployment: its environment, commit and statuses in order."""
        state = self.world.hub.state
        return [
            (d.environment, d.sha, [s.state for s in d.statuses])
            for d in sorted(state.deployments.values(), key=lambda d: d.id)
            if d.repository == self.world.repository.full_name
        ]


async def github_shop(
    sessions: SessionFactory,
    tmp_path: Path,
    world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
) -> GitHubShop:
    """The sample storefront on the stand-in's acme/storefront, reached by the project over
    smart HTTP, and its `github` connector made with the App's credentials and scoped to the
    project, tested as an operator does it. No git connector: git uses the App's installation
    token."""
    shop = await make_shop(sessions, tmp_path)
    git(
        shop.project.repo_url,
        "push",
        "--quiet",
        "--force",
        str(world.repository.bare.path),
        "main:main",
    )
    async with sessions() as session:
        project = await session.get(Project, shop.project.id)
        assert project is not None
        project.repo_url = world.hub.clone_url(world.repository)
        session.add(project)
        await session.commit()
        await session.refresh(project)
        shop.project = project
    settings = test_settings(
        task_queue=task_queue, deploy_task_queue=deploy_queue, workspace_dir=tmp_path / "workspace"
    ).model_copy(
        update={
            "credential_keys": SecretStr(KEYS),
            "credential_key_id": "k1",
            "repository_cache_dir": tmp_path / "cache",
        }
    )
    store, connections = connector_clients(settings, sessions)
    service = ConnectorService(sessions, store, connections)
    created = await service.create(
        tenant_id=shop.tenant.id,
        kind=ConnectorKind.GITHUB,
        name="Storefront on GitHub",
        config=world.connector_config(),
        credentials=world.app_credentials(),
        project_id=shop.project.id,
    )
    tested = await service.test(created.id)
    assert tested.status.value == "active", tested.last_error
    return GitHubShop(shop, world, settings, created.id)


async def outcome(lifecycle: LifecycleClient, request_id: uuid.UUID) -> PromptRequestResult:
    try:
        async with asyncio.timeout(OUTCOME_WITHIN_S):
            return await lifecycle.wait_for_outcome(request_id)
    except TimeoutError:
        status = await lifecycle.status(request_id)
        raise AssertionError(f"no outcome; the request is at {status!r}") from None


@contextlib.asynccontextmanager
async def ticking(world: GitHubWorld, seconds: float = 31.0) -> AsyncIterator[None]:
    """The stand-in's clock jumps ahead every half second, so scripted checks end."""

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.5)
            world.hub.clock.advance(seconds)

    ticker = asyncio.create_task(tick())
    try:
        yield
    finally:
        ticker.cancel()


def green_ci(world: GitHubWorld) -> None:
    """The tenant's CI: a check run (as GitHub Actions) and a commit status on every head."""
    state = world.hub.state
    state.add_check_script(world.repository, CheckScript("build", outcome="success"))
    state.add_check_script(world.repository, CheckScript("lint", kind="status", outcome="success"))


async def test_three_requests_in_a_row_become_pull_requests_merged_in_order_by_their_checks(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    green_ci(github_world)
    before = hub.head("main")
    results = []
    async with running_workers(client, sessions, hub.settings):
        for prompt in (
            "set theme to dark",
            "set free_shipping_threshold to 75",
            "set store_name to Corner Shop Plus",
        ):
            result = await outcome(lifecycle, await submit(lifecycle, hub.shop, prompt))
            assert result.status is PromptStatus.COMPLETED, result.reason
            results.append(result)
        histories = [
            await history_text(
                client, prompt_request_workflow_id(r.prompt_request_id), hub.settings
            )
            for r in results
        ]

    # git spoke to GitHub with the App's installation tokens (the project has no git
    # connector), and no token shows in what the workflows recorded.
    tokens = list(github_world.hub.state.tokens)
    assert tokens and all(
        str(r.prompt_request_id) in h for r, h in zip(results, histories, strict=True)
    )
    assert not [t for t in tokens for h in histories if t in h]
    # The three changes are on main on GitHub, which production runs.
    main = hub.config("main")
    assert (main["theme"], main["free_shipping_threshold"], main["store_name"]) == (
        "dark",
        75,
        "Corner Shop Plus",
    )
    assert hub.tree("main") == hub.tree("env/production")
    # One pull request each, merged in order by changeflow, its body the plan.
    pulls = hub.pulls()
    assert [(p.number, p.merged, p.merged_by) for p in pulls] == [
        (1, True, "changeflow[bot]"),
        (2, True, "changeflow[bot]"),
        (3, True, "changeflow[bot]"),
    ]
    assert [p.head_ref for p in pulls] == [f"changeflow/{r.prompt_request_id}" for r in results]
    assert [p.head_sha for p in pulls] == [r.commit_sha for r in results]
    assert all(
        "### Risk" in (p.body or "") and "approved by policy" in (p.body or "") for p in pulls
    )
    # Each body links to its request's lifecycle in the Web UI.
    links = [
        hub.settings.workflow_url(prompt_request_workflow_id(r.prompt_request_id)) for r in results
    ]
    bodies = [p.body or "" for p in pulls]
    assert all(
        f"[Follow the request in changeflow]({link})" in body
        for body, link in zip(bodies, links, strict=True)
    )
    merges = [p.merge_commit_sha for p in pulls]
    # Merged one after the other: each merge commit's first parent is the one before.
    assert git(hub.bare, "rev-parse", f"{merges[2]}^1") == merges[1]
    assert git(hub.bare, "rev-parse", f"{merges[1]}^1") == merges[0]
    assert merges[2] == hub.head("main")
    assert git(hub.bare, "merge-base", "--is-ancestor", before, merges[0]) == ""
    # Staging on each head, production on each merge commit, all verified green.
    assert hub.deployments() == [
        deployment
        for result, merge in zip(results, merges, strict=True)
        for deployment in (
            ("staging", result.commit_sha, ["in_progress", "success"]),
            ("production", merge, ["in_progress", "success"]),
        )
    ]
    # Each request's branch went with it.
    assert hub.branches() == ENVIRONMENTS


async def test_a_failing_check_in_staging_ends_the_request_naming_it_and_nothing_merges(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    state = github_world.hub.state
    state.add_check_script(github_world.repository, CheckScript("build", outcome="success"))
    state.add_check_script(
        github_world.repository,
        CheckScript(
            "e2e",
            outcome="failure",
            branches="changeflow/*",
            details_url="https://ci.example/e2e/41",
        ),
    )
    before = hub.head("main")
    async with running_workers(client, sessions, hub.settings):
        result = await outcome(lifecycle, await submit(lifecycle, hub.shop, "set theme to dark"))

    # Failed in staging, which was rolled back; the reason names the check and its link.
    assert result.status is PromptStatus.ROLLED_BACK, result.reason
    assert result.reason.startswith("staging verification failed (GitHub checks of staging: ")
    assert "e2e: failure (https://ci.example/e2e/41)" in result.reason, result.reason
    # Nothing merged: main is as it was, the pull request closed unmerged, its branch gone.
    assert hub.head("main") == before
    [pull] = hub.pulls()
    assert (pull.state, pull.merged) == ("closed", False)
    assert hub.branches() == ["env/staging", "main"]
    assert hub.deployments() == [("staging", result.commit_sha, ["in_progress", "failure"])]


async def test_a_pull_request_closed_by_a_person_cancels_the_request_saying_who(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    # CI that never reports on the request's branch: staging waits on it.
    github_world.hub.state.add_check_script(
        github_world.repository, CheckScript("build", outcome=None, branches="changeflow/*")
    )
    before = hub.head("main")
    async with (
        webhooks_process(client, sessions, tmp_path / "webhooks") as base,
        running_workers(client, sessions, hub.settings),
    ):
        github_world.hub.webhooks.deliver_to(f"{base}/webhooks/github/{hub.connector_id}")
        request_id = await submit(lifecycle, hub.shop, "set theme to dark")
        await wait_for_status(
            lifecycle,
            request_id,
            lambda s: s.status is PromptStatus.DEPLOYING_STAGING and "waiting for" in s.step,
            within=60,
        )
        [pull] = hub.pulls()
        github_world.hub.state.close_pull_as_person(pull, "octocat")
        result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.CANCELLED
    assert result.reason == "pull request #1 closed on GitHub by octocat"
    assert hub.head("main") == before
    assert (pull.state, pull.merged) == ("closed", False)
    # Staging's release was undone and the request's branch deleted.
    assert "changeflow/" not in " ".join(hub.branches())
    assert hub.deployments()[0][0] == "staging"


async def test_a_deleted_request_branch_cancels_the_request_saying_who(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    # CI that never reports on the request's branch: staging waits on it.
    github_world.hub.state.add_check_script(
        github_world.repository, CheckScript("build", outcome=None, branches="changeflow/*")
    )
    before = hub.head("main")
    async with (
        webhooks_process(client, sessions, tmp_path / "webhooks") as base,
        running_workers(client, sessions, hub.settings),
    ):
        github_world.hub.webhooks.deliver_to(f"{base}/webhooks/github/{hub.connector_id}")
        request_id = await submit(lifecycle, hub.shop, "set theme to dark")
        await wait_for_status(
            lifecycle,
            request_id,
            lambda s: s.status is PromptStatus.DEPLOYING_STAGING and "waiting for" in s.step,
            within=60,
        )
        # A person deletes the request's branch on GitHub (which closes its pull request).
        github_world.hub.state.delete_branch_as_person(
            github_world.repository, f"changeflow/{request_id}", "octocat"
        )
        result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.CANCELLED
    assert result.reason == f"branch changeflow/{request_id} deleted on GitHub by octocat"
    assert hub.head("main") == before
    [pull] = hub.pulls()
    assert (pull.state, pull.merged) == ("closed", False)
    # Staging's release was undone: no branch holds the change.
    assert "changeflow/" not in " ".join(hub.branches())
    assert [b for b in hub.branches() if hub.config(b)["theme"] == "dark"] == []
    assert hub.deployments()[0][0] == "staging"


async def test_a_cancel_while_production_merges_is_refused_and_the_change_ships(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    green_ci(github_world)
    # GitHub holds changeflow's merge call: production waits on it.
    gate = github_world.hub.state.merge_gate
    gate.armed = True
    try:
        async with running_workers(client, sessions, hub.settings):
            request_id = await submit(lifecycle, hub.shop, "set theme to dark")
            assert await asyncio.to_thread(gate.reached.wait, OUTCOME_WITHIN_S)
            production = next(
                d
                for d in (await lifecycle.status(request_id)).deployments
                if d.environment is DeploymentEnvironment.PRODUCTION
            )
            with pytest.raises(LifecycleRefused) as refused:
                await lifecycle.cancel(request_id, reason="changed my mind")
            gate.opened.set()
            result = await outcome(lifecycle, request_id)
    finally:
        gate.opened.set()

    # Refused: the merge was asked of GitHub; the way back is an operator rollback.
    assert refused.value.error_type == ErrorType.CANCEL_TOO_LATE
    assert f"changeflow rollback {production.deployment_id}" in str(refused.value)
    assert "merging pull request #1" in str(refused.value)
    # The request completed as if no cancel had come: main holds the change, production too.
    assert result.status is PromptStatus.COMPLETED, result.reason
    [pull] = hub.pulls()
    assert (pull.merged, pull.merged_by) == (True, "changeflow[bot]")
    assert hub.head("main") == pull.merge_commit_sha
    assert hub.config("main")["theme"] == "dark"
    assert hub.tree("main") == hub.tree("env/production")
    assert hub.branches() == ENVIRONMENTS


async def test_a_cancel_authorized_before_the_merge_keeps_the_change_off_main(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    green_ci(github_world)
    state = github_world.hub.state
    # GitHub holds production's release (the push of env/production): the merge comes after.
    state.push_gate_ref, state.push_gate.armed = "refs/heads/env/production", True
    before = hub.head("main")
    try:
        async with running_workers(client, sessions, hub.settings):
            request_id = await submit(lifecycle, hub.shop, "set theme to dark")
            assert await asyncio.to_thread(state.push_gate.reached.wait, OUTCOME_WITHIN_S)
            cancelling = asyncio.create_task(lifecycle.cancel(request_id, reason="not now"))
            # The cancel is authorized once the request cancels its production deployment.
            lifecycle_handle = client.get_workflow_handle(prompt_request_workflow_id(request_id))
            async with asyncio.timeout(60):
                while True:
                    history = await lifecycle_handle.fetch_history()
                    if CANCEL_CHILD in [e.event_type for e in history.events]:
                        break
                    await asyncio.sleep(0.2)
            state.push_gate.opened.set()
            await cancelling
            result = await outcome(lifecycle, request_id)
    finally:
        state.push_gate.opened.set()

    assert result.status is PromptStatus.CANCELLED, result.reason
    # Nothing merged: main is as it was, the pull request closed unmerged, its branch gone.
    assert hub.head("main") == before
    [pull] = hub.pulls()
    assert (pull.state, pull.merged) == ("closed", False)
    assert "changeflow/" not in " ".join(hub.branches())
    # Both environments restored: no branch on GitHub holds the change.
    assert [b for b in hub.branches() if hub.config(b)["theme"] == "dark"] == []
    # Production never asked GitHub to merge.
    assert not [r for r in github_world.hub.requests if r[1].endswith("/merge")]


async def test_branch_protection_refusing_the_merge_fails_the_request_with_githubs_reason(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    green_ci(github_world)
    github_world.hub.state.protect(
        github_world.repository, "main", Protection(required_approvals=1)
    )
    before = hub.head("main")
    async with running_workers(client, sessions, hub.settings):
        result = await outcome(lifecycle, await submit(lifecycle, hub.shop, "set theme to dark"))

    assert result.status is PromptStatus.FAILED, result.reason
    assert result.reason.startswith("GitHub refused to merge pull request #1 ("), result.reason
    assert "At least 1 approving review is required" in result.reason
    assert hub.head("main") == before
    [pull] = hub.pulls()
    assert (pull.state, pull.merged) == ("closed", False)
    # Production was released, not merged, and rolled back: it runs main's tree again.
    assert hub.tree("env/production") == hub.tree("main")
    assert [d[0] for d in hub.deployments()] == ["staging"]


async def test_a_person_pushing_to_main_before_the_merge_has_the_change_rebased_and_shipped(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    state = github_world.hub.state
    # CI takes 30 s of the stand-in's clock: staging waits for it while a person pushes.
    state.add_check_script(github_world.repository, CheckScript("build", after=30))
    async with running_workers(client, sessions, hub.settings):
        request_id = await submit(lifecycle, hub.shop, "set theme to dark")
        await wait_for_status(
            lifecycle,
            request_id,
            lambda s: s.status is PromptStatus.DEPLOYING_STAGING and "waiting for" in s.step,
            within=60,
        )
        pushed = state.push_commit(
            github_world.repository, "main", {"about.html": "<p>About us</p>\n"}
        )
        async with ticking(github_world):
            result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    [pull] = hub.pulls()
    assert pull.merged
    # The change was rebased onto the person's commit: main holds both.
    assert git(hub.bare, "merge-base", "--is-ancestor", pushed, "main") == ""
    assert git(hub.bare, "show", "main:about.html") == "<p>About us</p>"
    assert hub.config("main")["theme"] == "dark"
    assert hub.tree("main") == hub.tree("env/production")
    assert pull.head_sha == result.commit_sha
    assert git(hub.bare, "merge-base", "--is-ancestor", pushed, result.commit_sha or "") == ""
    # Staging verified twice (before and after the rebase), production once, on the merge.
    environments = [(d[0], d[2][-1]) for d in hub.deployments()]
    assert environments == [
        ("staging", "success"),
        ("staging", "success"),
        ("production", "success"),
    ]
    assert hub.branches() == ENVIRONMENTS


async def test_an_operator_rollback_reverts_main_by_a_pull_request_merged_on_github(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    green_ci(github_world)
    async with running_workers(client, sessions, hub.settings):
        first = await outcome(lifecycle, await submit(lifecycle, hub.shop, "set theme to dark"))
        second = await outcome(
            lifecycle, await submit(lifecycle, hub.shop, "set free_shipping_threshold to 75")
        )
        assert [first.status, second.status] == [PromptStatus.COMPLETED] * 2, second.reason
        target = next(
            d.deployment_id
            for d in first.deployments
            if d.environment is DeploymentEnvironment.PRODUCTION
        )
        merged_second = hub.head("main")
        rollback_id = await lifecycle.roll_back(
            tenant_id=hub.shop.tenant.id, target_deployment_id=target, reason="too expensive"
        )
        async with asyncio.timeout(OUTCOME_WITHIN_S):
            restored = await lifecycle.rollback_result(rollback_id)

    assert restored.status is DeploymentStatus.SUCCEEDED, restored.verification_output
    assert git(hub.bare, "rev-parse", "env/production") == first.commit_sha
    # main on GitHub went back by a third pull request, the revert, merged by changeflow.
    pulls = hub.pulls()
    assert [(p.number, p.merged) for p in pulls] == [(1, True), (2, True), (3, True)]
    revert = pulls[2]
    assert revert.title == f"Revert production to {(first.commit_sha or '')[:12]}"
    assert revert.head_ref == f"changeflow/{rollback_id}"
    assert hub.head("main") == revert.merge_commit_sha
    assert git(hub.bare, "rev-parse", "main^1") == merged_second
    assert hub.tree("main") == hub.tree("env/production")
    assert hub.config("main")["free_shipping_threshold"] == 50
    assert hub.config("main")["theme"] == "dark"
    assert hub.branches() == ENVIRONMENTS


async def test_a_project_whose_default_branch_is_not_githubs_is_refused_at_planning(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    git(hub.bare, "branch", "trunk", "main")  # the branch exists, but GitHub's default is main
    async with sessions() as session:
        project = await session.get(Project, hub.shop.project.id)
        assert project is not None
        project.default_branch = "trunk"
        session.add(project)
        await session.commit()
    async with running_workers(client, sessions, hub.settings):
        result = await outcome(lifecycle, await submit(lifecycle, hub.shop, "set theme to dark"))

    assert result.status is PromptStatus.FAILED
    assert "the repository's default branch on GitHub is 'main', the project's is 'trunk'" in (
        result.reason
    ), result.reason
    assert hub.pulls() == []


async def test_a_pull_request_merged_by_a_person_ships_the_default_branch_to_production(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    state = github_world.hub.state
    # CI takes 30 s of the stand-in's clock: a person merges while staging waits for it.
    state.add_check_script(github_world.repository, CheckScript("build", after=30))
    async with (
        webhooks_process(client, sessions, tmp_path / "webhooks") as base,
        running_workers(client, sessions, hub.settings),
    ):
        github_world.hub.webhooks.deliver_to(f"{base}/webhooks/github/{hub.connector_id}")
        request_id = await submit(lifecycle, hub.shop, "set theme to dark")
        await wait_for_status(
            lifecycle,
            request_id,
            lambda s: s.status is PromptStatus.DEPLOYING_STAGING and "waiting for" in s.step,
            within=60,
        )
        [pull] = hub.pulls()
        state.merge_pull(pull, sha=None, method="merge", title=None, message=None, actor="octocat")
        await asyncio.to_thread(github_world.hub.webhooks.wait_idle)
        async with ticking(github_world):
            result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert result.reason == (
        "pull request #1 merged on GitHub by octocat; production runs the default branch's head"
    )
    assert (pull.merged, pull.merged_by) == (True, "octocat")
    # Production released the person's merge commit, verified by its checks; main is at rest.
    merge = hub.head("main")
    assert merge == pull.merge_commit_sha
    assert hub.head("env/production") == merge
    assert hub.config("main")["theme"] == "dark"
    assert [(d[0], d[1], d[2][-1]) for d in hub.deployments()] == [
        ("staging", result.commit_sha, "success"),
        ("production", merge, "success"),
    ]
    assert hub.branches() == ENVIRONMENTS


async def test_a_persons_push_to_the_request_branch_fails_the_request_unmerged(
    client: Client,
    sessions: SessionFactory,
    github_world: GitHubWorld,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    hub = await github_shop(sessions, tmp_path, github_world, task_queue, deploy_queue)
    state = github_world.hub.state
    state.add_check_script(github_world.repository, CheckScript("build", after=30))
    async with running_workers(client, sessions, hub.settings):
        request_id = await submit(lifecycle, hub.shop, "set theme to dark")
        await wait_for_status(
            lifecycle,
            request_id,
            lambda s: s.status is PromptStatus.DEPLOYING_STAGING and "waiting for" in s.step,
            within=60,
        )
        [pull] = hub.pulls()
        approved, before = pull.head_sha, hub.head("main")
        pushed = state.push_commit(
            github_world.repository, pull.head_ref, {"backdoor.js": "alert(1)\n"}
        )
        assert pull.head_sha == pushed
        async with ticking(github_world):
            result = await outcome(lifecycle, request_id)

    # The merge's head guard refused the pushed head: what would merge is not what was
    # approved, so the request fails, nothing merged, production rolled back to main's tree.
    assert result.status is PromptStatus.FAILED, result.reason
    assert result.reason.startswith(
        f"changeflow/{request_id} was pushed to outside changeflow after {approved[:12]} was "
        "verified: what would merge is not what was approved"
    ), result.reason
    assert hub.head("main") == before
    assert (pull.state, pull.merged) == ("closed", False)
    assert hub.tree("main") == hub.tree("env/production")
    assert hub.branches() == ENVIRONMENTS
