"""GitHub projects through the whole lifecycle (issue 19 part 2): a project with a `github`
connector ships each request as a pull request on the GitHub stand-in (scripts/github_stand_in/),
verified by the tenant's own checks as GitHub Deployments, merged by production. Real workers,
Temporal and PostgreSQL; what a user sees is asserted on the stand-in: its pull requests, its
deployments and their statuses, its branches and what they hold.

Every scenario starts from the fixture `hub` (tests/github_support.py's GitHubShop): the sample
storefront on the stand-in's acme/storefront with its `github` connector; `hub.running()` runs
the workers (`webhooks=True`: the webhooks process too, the App's webhook delivering to it)."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType

from client.lifecycle import LifecycleRefused
from models import DeploymentEnvironment, DeploymentStatus, Project, PromptStatus
from scripts.github_stand_in.records import CheckScript, Protection
from tests.github_support import OUTCOME_WITHIN_S, GitHubShop
from tests.remote_support import history_text
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import deployment_workflow_id, prompt_request_workflow_id
from workflows.contracts.lifecycle import PromptRequestResult

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENVIRONMENTS = ["env/production", "env/staging", "main"]
# The request asked Temporal to cancel its deployment child (an accepted cancel).
CANCEL_CHILD = EventType.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED


@contextlib.asynccontextmanager
async def smoke_on_main(hub: GitHubShop, *conclusions: str) -> AsyncIterator[None]:
    """The tenant's CI on main, decided by the test merge by merge: each new head of main (a
    merge commit) gets a `smoke` check run, pending until this completes it; the first one as
    `conclusions[0]`, the next as `conclusions[1]`, and so on (merges come one at a time)."""
    state = hub.state
    state.add_check_script(hub.repository, CheckScript("smoke", outcome=None, branches="main"))

    async def decide() -> None:
        for conclusion in conclusions:
            while True:
                # Read without the stand-in's lock, which a held call (a gate) keeps: a copy of
                # the list is taken whole.
                pending = [
                    r
                    for r in list(state.check_runs)
                    if r.repository == hub.repository.full_name
                    and r.name == "smoke"
                    and r.status != "completed"
                ]
                if pending:
                    await asyncio.to_thread(state.complete_check_run, pending[0], conclusion)
                    break
                await asyncio.sleep(0.05)

    deciding = asyncio.create_task(decide())
    try:
        yield
    finally:
        deciding.cancel()


def ours(hub: GitHubShop, sha: str) -> list[uuid.UUID]:
    """changeflow's deployments that GitHub Deployments of commit `sha` name, in order."""
    return [
        uuid.UUID(d.payload["changeflow_deployment_id"])
        for d in sorted(hub.state.deployments.values(), key=lambda d: d.id)
        if d.sha == sha
    ]


async def test_three_requests_in_a_row_become_pull_requests_merged_in_order_by_their_checks(
    hub: GitHubShop,
) -> None:
    hub.green_ci()
    before = hub.head("main")
    results = []
    async with hub.running():
        for prompt in (
            "set theme to dark",
            "set free_shipping_threshold to 75",
            "set store_name to Corner Shop Plus",
        ):
            result = await hub.ship(prompt)
            assert result.status is PromptStatus.COMPLETED, result.reason
            results.append(result)
        histories = [
            await history_text(
                hub.client, prompt_request_workflow_id(r.prompt_request_id), hub.settings
            )
            for r in results
        ]

    # git spoke to GitHub with the App's installation tokens (the project has no git
    # connector), and no token shows in what the workflows recorded.
    tokens = list(hub.state.tokens)
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
    assert hub.git("rev-parse", f"{merges[2]}^1") == merges[1]
    assert hub.git("rev-parse", f"{merges[1]}^1") == merges[0]
    assert merges[2] == hub.head("main")
    assert hub.git("merge-base", "--is-ancestor", before, merges[0]) == ""
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
    hub: GitHubShop,
) -> None:
    state = hub.state
    state.add_check_script(hub.repository, CheckScript("build", outcome="success"))
    state.add_check_script(
        hub.repository,
        CheckScript(
            "e2e",
            outcome="failure",
            branches="changeflow/*",
            details_url="https://ci.example/e2e/41",
        ),
    )
    before = hub.head("main")
    async with hub.running():
        result = await hub.ship("set theme to dark")

    # Failed in staging, which was rolled back; the reason names the check and its link.
    assert result.status is PromptStatus.ROLLED_BACK, result.reason
    assert result.reason.startswith("staging verification failed (GitHub checks of staging: ")
    assert "e2e: failure (https://ci.example/e2e/41)" in result.reason, result.reason
    # Nothing merged: main is as it was, the pull request closed unmerged, its branch gone.
    assert hub.head("main") == before
    [pull] = hub.pulls()
    assert (pull.state, pull.merged) == ("closed", False)
    assert hub.branches() == ["env/staging", "main"]
    # Staging's rollback was verified by the checks of the commit it restored, main's head.
    assert hub.head("env/staging") == before
    assert hub.deployments() == [
        ("staging", result.commit_sha, ["in_progress", "failure"]),
        ("staging", before, ["in_progress", "success"]),
    ]


async def test_a_first_production_release_failing_its_checks_reverts_the_merge_it_made(
    hub: GitHubShop,
) -> None:
    # Production's checks (of the merge commit on main) fail; staging's pass, and so do those
    # of the revert's merge. Production has no earlier release: what it falls back to is main
    # as it was before the merge.
    hub.state.add_check_script(hub.repository, CheckScript("build", outcome="success"))
    before = hub.tree("main")
    async with hub.running(), smoke_on_main(hub, "failure", "success"):
        result = await hub.ship("set theme to dark")

    assert result.status is PromptStatus.ROLLED_BACK, result.reason
    assert result.reason.startswith("production verification failed"), result.reason
    # The merge was reverted by a pull request of its own: neither main nor production runs
    # the change.
    pulls = hub.pulls()
    assert [(p.number, p.merged) for p in pulls] == [(1, True), (2, True)]
    merge, revert = (p.merge_commit_sha or "" for p in pulls)
    assert hub.head("main") == revert
    assert hub.tree("main") == hub.tree("env/production") == before
    assert hub.config("env/production")["theme"] != "dark"
    assert hub.branches() == ENVIRONMENTS
    # The rollback merged its revert, then was verified like any release: by the checks of the
    # revert's merge commit, as a production Deployment of its own.
    assert hub.deployments() == [
        ("staging", result.commit_sha, ["in_progress", "success"]),
        ("production", merge, ["in_progress", "failure"]),
        ("production", revert, ["in_progress", "success"]),
    ]
    production = next(
        d for d in result.deployments if d.environment is DeploymentEnvironment.PRODUCTION
    )
    assert (production.status, production.rollback_status) == (
        DeploymentStatus.ROLLED_BACK,
        DeploymentStatus.SUCCEEDED,
    )
    assert ours(hub, revert) == [production.rollback_deployment_id]


async def test_an_automatic_rollback_whose_revert_fails_its_checks_fails_too_main_as_production(
    hub: GitHubShop,
) -> None:
    # Production's checks fail, and so do those of the revert's merge commit.
    hub.state.add_check_script(hub.repository, CheckScript("build", outcome="success"))
    before = hub.tree("main")
    async with hub.running(), smoke_on_main(hub, "failure", "failure"):
        result = await hub.ship("set theme to dark")

    # As for a rollback whose check fails on any project: the rollback FAILED, nothing more is
    # tried, and the environment keeps what it restored. main has the revert merged already
    # (merged before its checks ran): it holds the tree production runs.
    production = next(
        d for d in result.deployments if d.environment is DeploymentEnvironment.PRODUCTION
    )
    assert (production.status, production.rollback_status) == (
        DeploymentStatus.FAILED,
        DeploymentStatus.FAILED,
    ), result.reason
    pulls = hub.pulls()
    assert [(p.number, p.merged) for p in pulls] == [(1, True), (2, True)]
    merge, revert = (p.merge_commit_sha or "" for p in pulls)
    assert hub.head("main") == revert
    assert hub.tree("main") == hub.tree("env/production") == before
    assert hub.deployments() == [
        ("staging", result.commit_sha, ["in_progress", "success"]),
        ("production", merge, ["in_progress", "failure"]),
        ("production", revert, ["in_progress", "failure"]),
    ]
    assert hub.branches() == ENVIRONMENTS


async def test_a_pull_request_closed_by_a_person_cancels_the_request_saying_who(
    hub: GitHubShop,
) -> None:
    # CI that never reports on the request's branch: staging waits on it.
    hub.state.add_check_script(
        hub.repository, CheckScript("build", outcome=None, branches="changeflow/*")
    )
    before = hub.head("main")
    async with hub.running(webhooks=True):
        request_id = await hub.submit("set theme to dark")
        await hub.staging_waits_for_checks(request_id)
        [pull] = hub.pulls()
        hub.state.close_pull_as_person(pull, "octocat")
        result = await hub.outcome(request_id)

    assert result.status is PromptStatus.CANCELLED
    assert result.reason == "pull request #1 closed on GitHub by octocat"
    assert hub.head("main") == before
    assert (pull.state, pull.merged) == ("closed", False)
    # Staging's release was undone and the request's branch deleted.
    assert "changeflow/" not in " ".join(hub.branches())
    assert hub.deployments()[0][0] == "staging"


async def test_a_deleted_request_branch_cancels_the_request_saying_who(hub: GitHubShop) -> None:
    # CI that never reports on the request's branch: staging waits on it.
    hub.state.add_check_script(
        hub.repository, CheckScript("build", outcome=None, branches="changeflow/*")
    )
    before = hub.head("main")
    async with hub.running(webhooks=True):
        request_id = await hub.submit("set theme to dark")
        await hub.staging_waits_for_checks(request_id)
        # A person deletes the request's branch on GitHub (which closes its pull request).
        hub.state.delete_branch_as_person(hub.repository, f"changeflow/{request_id}", "octocat")
        result = await hub.outcome(request_id)

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
    hub: GitHubShop,
) -> None:
    hub.green_ci()
    # GitHub holds changeflow's merge call: production waits on it.
    gate = hub.state.merge_gate
    gate.armed = True
    try:
        async with hub.running():
            request_id = await hub.submit("set theme to dark")
            assert await asyncio.to_thread(gate.reached.wait, OUTCOME_WITHIN_S)
            production = next(
                d
                for d in (await hub.lifecycle.status(request_id)).deployments
                if d.environment is DeploymentEnvironment.PRODUCTION
            )
            with pytest.raises(LifecycleRefused) as refused:
                await hub.lifecycle.cancel(request_id, reason="changed my mind")
            gate.opened.set()
            result = await hub.outcome(request_id)
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
    hub: GitHubShop,
) -> None:
    hub.green_ci()
    state = hub.state
    # GitHub holds production's release (the push of env/production): the merge comes after.
    state.push_gate_ref, state.push_gate.armed = "refs/heads/env/production", True
    before = hub.head("main")
    try:
        async with hub.running():
            request_id = await hub.submit("set theme to dark")
            assert await asyncio.to_thread(state.push_gate.reached.wait, OUTCOME_WITHIN_S)
            cancelling = asyncio.create_task(hub.lifecycle.cancel(request_id, reason="not now"))
            # The cancel is authorized once the request cancels its production deployment.
            lifecycle_handle = hub.client.get_workflow_handle(
                prompt_request_workflow_id(request_id)
            )
            async with asyncio.timeout(60):
                while True:
                    history = await lifecycle_handle.fetch_history()
                    if CANCEL_CHILD in [e.event_type for e in history.events]:
                        break
                    await asyncio.sleep(0.2)
            state.push_gate.opened.set()
            await cancelling
            result = await hub.outcome(request_id)
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
    assert not [r for r in hub.stand_in.requests if r[1].endswith("/merge")]


async def test_branch_protection_refusing_the_merge_fails_the_request_with_githubs_reason(
    hub: GitHubShop,
) -> None:
    hub.green_ci()
    hub.state.protect(hub.repository, "main", Protection(required_approvals=1))
    before = hub.head("main")
    async with hub.running():
        result = await hub.ship("set theme to dark")

    assert result.status is PromptStatus.FAILED, result.reason
    assert result.reason.startswith("GitHub refused to merge pull request #1 ("), result.reason
    assert "At least 1 approving review is required" in result.reason
    assert hub.head("main") == before
    [pull] = hub.pulls()
    assert (pull.state, pull.merged) == ("closed", False)
    # Production was released, not merged, and rolled back: it runs main's tree again. main
    # needed no revert: the rollback was verified by the checks of the commit it restored.
    assert hub.tree("env/production") == hub.tree("main")
    assert hub.head("env/production") == before
    assert hub.deployments() == [
        ("staging", result.commit_sha, ["in_progress", "success"]),
        ("production", before, ["in_progress", "success"]),
    ]


async def test_a_person_pushing_to_main_before_the_merge_has_the_change_rebased_and_shipped(
    hub: GitHubShop,
) -> None:
    state = hub.state
    # CI takes 30 s of the stand-in's clock: staging waits for it while a person pushes.
    state.add_check_script(hub.repository, CheckScript("build", after=30))
    async with hub.running():
        request_id = await hub.submit("set theme to dark")
        await hub.staging_waits_for_checks(request_id)
        pushed = state.push_commit(hub.repository, "main", {"about.html": "<p>About us</p>\n"})
        async with hub.ticking():
            result = await hub.outcome(request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    [pull] = hub.pulls()
    assert pull.merged
    # The change was rebased onto the person's commit: main holds both.
    assert hub.git("merge-base", "--is-ancestor", pushed, "main") == ""
    assert hub.git("show", "main:about.html") == "<p>About us</p>"
    assert hub.config("main")["theme"] == "dark"
    assert hub.tree("main") == hub.tree("env/production")
    assert pull.head_sha == result.commit_sha
    assert hub.git("merge-base", "--is-ancestor", pushed, result.commit_sha or "") == ""
    # Staging verified twice (before and after the rebase), production once, on the merge.
    environments = [(d[0], d[2][-1]) for d in hub.deployments()]
    assert environments == [
        ("staging", "success"),
        ("staging", "success"),
        ("production", "success"),
    ]
    assert hub.branches() == ENVIRONMENTS


async def two_shipped(
    hub: GitHubShop,
) -> tuple[PromptRequestResult, PromptRequestResult, uuid.UUID]:
    """Two requests shipped one after the other, and the first's production deployment (an
    operator's rollback target)."""
    first = await hub.ship("set theme to dark")
    second = await hub.ship("set free_shipping_threshold to 75")
    assert [first.status, second.status] == [PromptStatus.COMPLETED] * 2, second.reason
    target = next(
        d.deployment_id
        for d in first.deployments
        if d.environment is DeploymentEnvironment.PRODUCTION
    )
    return first, second, target


async def test_an_operator_rollback_reverts_main_by_a_pull_request_merged_on_github(
    hub: GitHubShop,
) -> None:
    hub.green_ci()
    async with hub.running():
        first, _, target = await two_shipped(hub)
        merged_second = hub.head("main")
        rollback_id = await hub.lifecycle.roll_back(
            tenant_id=hub.shop.tenant.id, target_deployment_id=target, reason="too expensive"
        )
        async with asyncio.timeout(OUTCOME_WITHIN_S):
            restored = await hub.lifecycle.rollback_result(rollback_id)

    assert restored.status is DeploymentStatus.SUCCEEDED, restored.verification_output
    assert hub.git("rev-parse", "env/production") == first.commit_sha
    # main on GitHub went back by a third pull request, the revert, merged by changeflow.
    pulls = hub.pulls()
    assert [(p.number, p.merged) for p in pulls] == [(1, True), (2, True), (3, True)]
    revert = pulls[2]
    assert revert.title == f"Revert production to {(first.commit_sha or '')[:12]}"
    assert revert.head_ref == f"changeflow/{rollback_id}"
    assert hub.head("main") == revert.merge_commit_sha
    assert hub.git("rev-parse", "main^1") == merged_second
    assert hub.tree("main") == hub.tree("env/production")
    assert hub.config("main")["free_shipping_threshold"] == 50
    assert hub.config("main")["theme"] == "dark"
    assert hub.branches() == ENVIRONMENTS
    # The revert merged first, then the rollback was verified by the tenant's checks of its
    # merge commit, as a production Deployment of the rollback (not the project's check
    # command).
    assert hub.deployments()[-1] == (
        "production",
        revert.merge_commit_sha,
        ["in_progress", "success"],
    )
    assert ours(hub, revert.merge_commit_sha or "") == [rollback_id]
    assert (restored.verification_output or "").startswith("GitHub checks of production: ")


async def test_an_operator_rollback_whose_revert_fails_its_checks_fails_and_is_rolled_back(
    hub: GitHubShop,
) -> None:
    hub.green_ci()
    async with hub.running():
        _, second, target = await two_shipped(hub)
        # The revert's merge commit fails its checks; the one after it passes.
        async with smoke_on_main(hub, "failure", "success"):
            rollback_id = await hub.lifecycle.roll_back(
                tenant_id=hub.shop.tenant.id, target_deployment_id=target, reason="too expensive"
            )
            async with asyncio.timeout(OUTCOME_WITHIN_S):
                restored = await hub.lifecycle.rollback_result(rollback_id)

    # As an operator's rollback whose check fails on any project: FAILED, and rolled back
    # automatically to the release it replaced, which production runs again. Both reverts
    # were merged before their checks ran: main holds the tree production runs.
    assert restored.status is DeploymentStatus.FAILED, restored.verification_output
    assert "smoke: failure" in (restored.verification_output or "")
    assert restored.rollback_status is DeploymentStatus.SUCCEEDED
    assert hub.git("rev-parse", "env/production") == second.commit_sha
    pulls = hub.pulls()
    assert [(p.number, p.merged) for p in pulls] == [(n, True) for n in (1, 2, 3, 4)]
    assert [p.head_ref for p in pulls[2:]] == [
        f"changeflow/{rollback_id}",
        f"changeflow/{restored.rollback_deployment_id}",
    ]
    reverted, restored_again = (p.merge_commit_sha or "" for p in pulls[2:])
    assert hub.head("main") == restored_again
    assert (
        hub.tree("main") == hub.tree("env/production") == hub.tree(pulls[1].merge_commit_sha or "")
    )
    assert hub.config("main")["free_shipping_threshold"] == 75
    assert hub.deployments()[-2:] == [
        ("production", reverted, ["in_progress", "failure"]),
        ("production", restored_again, ["in_progress", "success"]),
    ]
    assert ours(hub, reverted) == [rollback_id]
    assert hub.branches() == ENVIRONMENTS


async def test_a_project_whose_default_branch_is_not_githubs_is_refused_at_planning(
    hub: GitHubShop,
) -> None:
    hub.git("branch", "trunk", "main")  # the branch exists, but GitHub's default is main
    async with hub.sessions() as session:
        project = await session.get(Project, hub.shop.project.id)
        assert project is not None
        project.default_branch = "trunk"
        session.add(project)
        await session.commit()
    async with hub.running():
        result = await hub.ship("set theme to dark")

    assert result.status is PromptStatus.FAILED
    assert "the repository's default branch on GitHub is 'main', the project's is 'trunk'" in (
        result.reason
    ), result.reason
    assert hub.pulls() == []


async def test_a_pull_request_merged_by_a_person_ships_the_default_branch_to_production(
    hub: GitHubShop,
) -> None:
    state = hub.state
    # CI takes 30 s of the stand-in's clock: a person merges while staging waits for it.
    state.add_check_script(hub.repository, CheckScript("build", after=30))
    async with hub.running(webhooks=True):
        request_id = await hub.submit("set theme to dark")
        await hub.staging_waits_for_checks(request_id)
        [pull] = hub.pulls()
        state.merge_pull(pull, sha=None, method="merge", title=None, message=None, actor="octocat")
        await asyncio.to_thread(hub.stand_in.webhooks.wait_idle)
        async with hub.ticking():
            result = await hub.outcome(request_id)

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
    hub: GitHubShop,
) -> None:
    state = hub.state
    state.add_check_script(hub.repository, CheckScript("build", after=30))
    async with hub.running():
        request_id = await hub.submit("set theme to dark")
        await hub.staging_waits_for_checks(request_id)
        [pull] = hub.pulls()
        approved, before = pull.head_sha, hub.head("main")
        pushed = state.push_commit(hub.repository, pull.head_ref, {"backdoor.js": "alert(1)\n"})
        assert pull.head_sha == pushed
        async with hub.ticking():
            result = await hub.outcome(request_id)

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


async def test_installation_tokens_expiring_mid_lifecycle_are_bought_again_and_the_change_ships(
    hub: GitHubShop,
) -> None:
    hub.green_ci()
    state = hub.state
    # Every installation token the App holds expires (as a revocation, or an hour over by
    # GitHub's clock before the worker's, would): before planning, once the pull request is
    # opened (staging's release is pushed next) and once it is merged (production's next).
    state.expire_tokens()
    state.expire_tokens_after("POST", "/pulls")
    state.expire_tokens_after("PUT", "/pulls/1/merge")
    async with hub.running():
        result = await hub.ship("set theme to dark")

    # The request shipped as if no token had expired: main holds the change, production too.
    assert result.status is PromptStatus.COMPLETED, result.reason
    [pull] = hub.pulls()
    assert (pull.merged, pull.merged_by) == (True, "changeflow[bot]")
    assert hub.head("main") == pull.merge_commit_sha
    assert hub.config("main")["theme"] == "dark"
    assert hub.tree("main") == hub.tree("env/production")
    assert hub.deployments() == [
        ("staging", result.commit_sha, ["in_progress", "success"]),
        ("production", pull.merge_commit_sha, ["in_progress", "success"]),
    ]
    assert hub.branches() == ENVIRONMENTS
    # Each expiry happened (three), and after each a fresh token was bought: GitHub issued
    # more tokens between one expiry and the next, and after the last.
    issued = [*state.expiries, hub.tokens_minted()]
    assert len(state.expiries) == 3 and issued == sorted(set(issued)), issued
    # Each time, an expired token was shown first and refused ("Bad credentials").
    refused = [r for r in hub.stand_in.requests if r[2] == 401 and r[1].startswith("/repos/")]
    assert len(refused) >= 3, hub.stand_in.requests


async def test_a_secondary_rate_limit_on_opening_the_pull_request_is_waited_out_and_ships(
    hub: GitHubShop,
) -> None:
    hub.green_ci()
    # GitHub refuses the pull request's creation twice, asking to wait 2 s each time.
    limits = hub.state.limits
    limits.arm_secondary_limit("POST", "/pulls", retry_after=2, status=403)
    limits.arm_secondary_limit("POST", "/pulls", retry_after=2, status=429)
    async with hub.running():
        result = await hub.ship("set theme to dark")
        history = await hub.client.get_workflow_handle(
            prompt_request_workflow_id(result.prompt_request_id)
        ).fetch_history()

    # The request completed; exactly one pull request was opened, and it shipped.
    assert result.status is PromptStatus.COMPLETED, result.reason
    assert hub.answers("POST", "/pulls") == [403, 429, 201]
    [pull] = hub.pulls()
    assert (pull.merged, pull.merged_by) == (True, "changeflow[bot]")
    assert pull.head_sha == result.commit_sha
    assert hub.head("main") == pull.merge_commit_sha
    assert hub.config("main")["theme"] == "dark"
    assert hub.tree("main") == hub.tree("env/production")
    assert [(d[0], d[2][-1]) for d in hub.deployments()] == [
        ("staging", "success"),
        ("production", "success"),
    ]
    assert hub.branches() == ENVIRONMENTS
    # Temporal retried the activity (no sleep inside it) after GitHub's wait, its third
    # attempt the one that opened the pull request.
    opening = {
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name
        == "github_open_pull_request"
    }
    [opened] = [
        e.activity_task_started_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.scheduled_event_id in opening
    ]
    assert opened.attempt == 3
    retry = opened.last_failure.application_failure_info
    assert retry.type == "GitHubRateLimited"
    assert retry.next_retry_delay.ToTimedelta() == timedelta(seconds=2)


async def test_a_check_run_webhook_wakes_staging_verification_before_its_next_poll(
    hub: GitHubShop,
) -> None:
    state = hub.state
    # The request's branch has a check that reports only when the test says; main's merge
    # commits have a green one (production verifies by polling: its events name no request).
    state.add_check_script(
        hub.repository, CheckScript("build", outcome=None, branches="changeflow/*")
    )
    state.add_check_script(hub.repository, CheckScript("build", branches="main"))
    async with hub.running(webhooks=True):
        request_id = await hub.submit("set theme to dark")
        await hub.staging_waits_for_checks(request_id)
        [pull] = hub.pulls()
        head = pull.head_sha
        staging = next(
            d
            for d in (await hub.lifecycle.status(request_id)).deployments
            if d.environment is DeploymentEnvironment.STAGING
        )
        verifying = hub.client.get_workflow_handle(deployment_workflow_id(staging.deployment_id))
        # Polling reads the checks 2, 4, 8, then 16 s apart (each webhook also wakes a read):
        # after the fourth read the next poll is 16 s away. The check goes green then, which
        # GitHub's webhook says.
        async with asyncio.timeout(60):
            while hub.checks_read(head) < 4:  # noqa: ASYNC110 (the stand-in has no event to wait on)
                await asyncio.sleep(0.05)
        reads_before = hub.checks_read(head)
        events_before = len((await verifying.fetch_history()).events)
        [run] = state.runs_for(hub.repository, head)
        state.complete_check_run(run, "success")
        result = await hub.outcome(request_id)
        after_green = (await verifying.fetch_history()).events[events_before:]

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert (pull.merged, pull.merged_by) == (True, "changeflow[bot]")
    assert hub.head("main") == pull.merge_commit_sha
    assert hub.config("main")["theme"] == "dark"
    assert hub.tree("main") == hub.tree("env/production")
    assert [(d[0], d[1], d[2][-1]) for d in hub.deployments()] == [
        ("staging", head, "success"),
        ("production", pull.merge_commit_sha, "success"),
    ]
    assert hub.branches() == ENVIRONMENTS
    # Once the check was green, staging read it once and was decided: woken by the webhook
    # (the github_event signal), with no poll's timer fired in between.
    kinds = [e.event_type for e in after_green]
    assert hub.checks_read(head) == reads_before + 1
    assert EventType.EVENT_TYPE_TIMER_FIRED not in kinds, [EventType.Name(k) for k in kinds]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED in kinds
