"""Shipped changes accumulate: every change that reached production stays there, on the
project's default branch too, whatever order requests are approved in, whoever pushes meanwhile,
and after rollbacks. Asserted on the repository itself (branches and config.json), with real
workers, Temporal and PostgreSQL."""

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlmodel import col, select
from temporalio.client import Client

from activities.change_engine import AppliedChange, ChangeProposal, ChangeStep
from activities.git_change_engine import GitChangeEngine
from activities.lifecycle import LifecycleActivities
from client.lifecycle import LifecycleClient, LifecycleRefused
from models import Deployment, DeploymentEnvironment, DeploymentStatus, PromptStatus
from models.db import SessionFactory
from scripts.sample_repo import FAILS_IN_PRODUCTION_PROMPT
from tests.lifecycle_support import (
    FUNDS,
    Shop,
    assert_default_branch_is_production,
    balance,
    config_on,
    git,
    holds,
    human_policy,
    make_shop,
    plan_awaiting_approval,
    push_config,
    settlements,
    submit,
    wait_for_status,
)
from tests.workers import running_workers
from workflows.contracts.errors import ErrorType
from workflows.contracts.lifecycle import (
    MAX_REBASE_ROUNDS,
    PromptRequestResult,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

OUTCOME_WITHIN_S = 40


async def outcome(lifecycle: LifecycleClient, request_id: uuid.UUID) -> PromptRequestResult:
    try:
        async with asyncio.timeout(OUTCOME_WITHIN_S):
            return await lifecycle.wait_for_outcome(request_id)
    except TimeoutError:
        status = await lifecycle.status(request_id)
        raise AssertionError(f"no outcome; the request is at {status!r}") from None


async def approve_by_both_admins(
    lifecycle: LifecycleClient, shop: Shop, request_id: uuid.UUID, content_hash: str
) -> None:
    for admin in shop.admins:
        await lifecycle.approve(request_id, user_id=admin.id, content_hash=content_hash)


def history(shop: Shop, branch: str = "main") -> list[str]:
    """Subjects of the branch's commits, oldest first, following first parents."""
    subjects = git(shop.project.repo_url, "log", "--first-parent", "--format=%s", branch)
    return subjects.splitlines()[::-1]


def merges(shop: Shop, branch: str = "main") -> str:
    return git(shop.project.repo_url, "rev-list", "--merges", branch)


async def test_three_requests_one_after_another_all_stay_in_production(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    prompts = [
        "set theme to dark",
        "set free_shipping_threshold to 75",
        "set store_name to Corner Shop Plus",
    ]
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        for prompt in prompts:
            result = await outcome(lifecycle, await submit(lifecycle, shop, prompt))
            assert result.status is PromptStatus.COMPLETED, result.reason
            assert_default_branch_is_production(shop)

    production = config_on(shop, "env/production")
    assert (
        production["theme"],
        production["free_shipping_threshold"],
        production["store_name"],
    ) == ("dark", 75, "Corner Shop Plus")
    assert config_on(shop, "main") == production
    # Linear: each change committed on the one shipped before it.
    assert merges(shop) == ""
    assert history(shop) == [
        "Corner Shop storefront",
        'Set theme to "dark" in config.json (was "light").',
        "Set free_shipping_threshold to 75 in config.json (was 50).",
        'Set store_name to "Corner Shop Plus" in config.json (was "Corner Shop").',
    ]
    assert git(shop.project.repo_url, "rev-parse", "main") == git(
        shop.project.repo_url, "rev-parse", "env/production"
    )


@pytest.mark.parametrize("first", [0, 1], ids=["in submission order", "in reverse order"])
async def test_two_requests_from_one_base_both_ship_in_the_order_they_shipped(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    first: int,
) -> None:
    """Both are planned on the same commit, then approved together: whichever reaches
    production second is rebased (at apply, or after production refused its moved base) and
    goes on without a new approval, since its changed lines are the same."""
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        requests = [
            await submit(lifecycle, shop, "set theme to dark"),
            await submit(lifecycle, shop, "set store_name to Corner Shop Plus"),
        ]
        plans = [(await plan_awaiting_approval(lifecycle, r))[1] for r in requests]
        assert plans[0].plan_id != plans[1].plan_id
        order = [first, 1 - first]
        for index in order:
            await approve_by_both_admins(
                lifecycle, shop, requests[index], plans[index].content_hash
            )
        results = [await outcome(lifecycle, r) for r in requests]
        assert [r.status for r in results] == [PromptStatus.COMPLETED] * 2, results
        assert_default_branch_is_production(shop)

    # No re-approval: each shipped the revision its approvers saw.
    assert [r.content_hash for r in results] == [p.content_hash for p in plans]
    production = config_on(shop, "env/production")
    assert (production["theme"], production["store_name"]) == ("dark", "Corner Shop Plus")
    assert merges(shop) == ""
    shipped = history(shop)[1:]
    assert len(shipped) == 2 and {s.split(" to ")[0] for s in shipped} == {
        "Set theme",
        "Set store_name",
    }
    # Main's history is the production releases, in the order they were verified.
    async with sessions() as session:
        released = await session.exec(
            select(Deployment.commit_sha)
            .where(
                Deployment.project_id == shop.project.id,
                Deployment.environment == DeploymentEnvironment.PRODUCTION,
                Deployment.status == DeploymentStatus.SUCCEEDED,
            )
            .order_by(col(Deployment.finished_at))
        )
        shipped_in_order = list(released.all())
    commits = git(shop.project.repo_url, "rev-list", "--first-parent", "--reverse", "main")
    assert commits.splitlines()[1:] == shipped_in_order
    assert sorted(shipped_in_order) == sorted(r.commit_sha for r in results)


async def test_a_push_between_plan_and_apply_is_kept_and_the_change_rebased_onto_it(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    repo = shop.project.repo_url
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(lifecycle, shop, "set theme to dark")
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        pushed = push_config(repo, store_name="Corner Shop & Co")
        await approve_by_both_admins(lifecycle, shop, request_id, plan.content_hash)
        result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert result.content_hash == plan.content_hash  # same changed lines: no new approval
    assert git(repo, "rev-parse", f"{result.commit_sha}^") == pushed
    production = config_on(shop, "env/production")
    assert (production["theme"], production["store_name"]) == ("dark", "Corner Shop & Co")
    assert_default_branch_is_production(shop)


async def test_a_rebase_that_changes_other_lines_goes_back_for_approval(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    """Someone pushed part of the change: the rebased diff changes less than was approved, so
    it is a new revision with a new hash, and the old hash no longer approves anything."""
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    repo = shop.project.repo_url
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(
            lifecycle, shop, "set theme to dark; set free_shipping_threshold to 75"
        )
        _, approved = await plan_awaiting_approval(lifecycle, request_id)
        pushed = push_config(repo, theme="dark")
        await approve_by_both_admins(lifecycle, shop, request_id, approved.content_hash)
        paused = await wait_for_status(
            lifecycle,
            request_id,
            lambda s: (
                s.status is PromptStatus.AWAITING_APPROVAL
                and s.plan is not None
                and s.plan.revision == 2
            ),
        )
        revised = paused.plan
        assert revised is not None
        assert revised.content_hash != approved.content_hash
        assert "rebased onto main" in paused.reason
        assert any("rebased onto main" in r for r in revised.risk_reasons)
        with pytest.raises(LifecycleRefused) as stale:
            await lifecycle.approve(
                request_id, user_id=shop.admins[0].id, content_hash=approved.content_hash
            )
        assert stale.value.error_type == ErrorType.STALE_PLAN_HASH
        # Nothing of the unapproved rebase has shipped.
        assert git(repo, "rev-parse", "main") == pushed
        assert git(repo, "branch", "--list", "env/production") == ""
        await approve_by_both_admins(lifecycle, shop, request_id, revised.content_hash)
        result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert result.content_hash == revised.content_hash
    assert git(repo, "rev-parse", f"{result.commit_sha}^") == pushed
    production = config_on(shop, "env/production")
    assert (production["theme"], production["free_shipping_threshold"]) == ("dark", 75)
    assert_default_branch_is_production(shop)


async def test_a_conflict_that_cannot_be_planned_again_fails_with_the_reason_and_no_charge(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    repo = shop.project.repo_url
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(lifecycle, shop, "set checkout.payment_provider to adyen")
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        # The section the change edits is gone: it conflicts, and planned again on the new
        # head the prompt names nothing there (a conflict that can be planned again waits for
        # a new approval instead: tests/test_requests_all_ship.py).
        pushed = push_config(repo, checkout="disabled")
        await approve_by_both_admins(lifecycle, shop, request_id, plan.content_hash)
        result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.FAILED
    assert "conflicts with main" in result.reason and "config.json" in result.reason
    assert "planning it again on the new base failed" in result.reason
    assert "checkout is not a section" in result.reason
    assert git(repo, "rev-parse", "main") == pushed
    assert git(repo, "branch", "--list", "env/*") == ""  # nothing was deployed
    assert await settlements(sessions, shop) == []
    assert all(h.status.value == "released" for h in await holds(sessions, shop))
    assert await balance(sessions, shop.account) == FUNDS


async def test_an_automatic_rollback_leaves_main_without_the_failed_change(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        shipped = await outcome(lifecycle, await submit(lifecycle, shop, "set theme to dark"))
        assert shipped.status is PromptStatus.COMPLETED, shipped.reason
        failed = await outcome(lifecycle, await submit(lifecycle, shop, FAILS_IN_PRODUCTION_PROMPT))
        assert failed.status is PromptStatus.ROLLED_BACK, failed.reason
        assert_default_branch_is_production(shop)
        assert config_on(shop, "main")["debug"] is False
        after = await outcome(
            lifecycle, await submit(lifecycle, shop, "set free_shipping_threshold to 75")
        )
        assert after.status is PromptStatus.COMPLETED, after.reason

    production = config_on(shop, "env/production")
    assert (production["theme"], production["free_shipping_threshold"], production["debug"]) == (
        "dark",
        75,
        False,
    )
    assert git(shop.project.repo_url, "rev-parse", f"{after.commit_sha}^") == shipped.commit_sha
    assert_default_branch_is_production(shop)


async def test_an_operator_rollback_reverts_main_so_the_next_change_does_not_bring_it_back(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    repo = shop.project.repo_url
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        first = await outcome(lifecycle, await submit(lifecycle, shop, "set theme to dark"))
        second = await outcome(
            lifecycle, await submit(lifecycle, shop, "set free_shipping_threshold to 75")
        )
        assert [first.status, second.status] == [PromptStatus.COMPLETED] * 2
        target = next(
            d.deployment_id
            for d in first.deployments
            if d.environment is DeploymentEnvironment.PRODUCTION
        )
        rollback_id = await lifecycle.roll_back(
            tenant_id=shop.tenant.id,
            target_deployment_id=target,
            reason="the threshold costs sales",
        )
        async with asyncio.timeout(OUTCOME_WITHIN_S):
            restored = await lifecycle.rollback_result(rollback_id)
        assert restored.status is DeploymentStatus.SUCCEEDED, restored.verification_output
        assert_default_branch_is_production(shop)
        # A revert commit on top of what shipped, naming the rollback deployment.
        assert git(repo, "rev-parse", "main^") == second.commit_sha
        assert str(rollback_id) in git(repo, "log", "-1", "--format=%B", "main")
        assert config_on(shop, "main")["free_shipping_threshold"] == 50
        after = await outcome(
            lifecycle, await submit(lifecycle, shop, "set store_name to Corner Shop Plus")
        )
        assert after.status is PromptStatus.COMPLETED, after.reason

    production = config_on(shop, "env/production")
    assert (
        production["theme"],
        production["free_shipping_threshold"],
        production["store_name"],
    ) == ("dark", 50, "Corner Shop Plus")
    assert merges(shop) == ""
    assert_default_branch_is_production(shop)


class PushedAfterEveryApply(GitChangeEngine):
    """Someone pushes to main right after every apply: production always finds it moved."""

    def __init__(self) -> None:
        self.pushes = 0

    async def apply(
        self,
        *,
        repo: Path,
        proposal: ChangeProposal,
        prompt: str,
        branch: str,
        onto: str | None = None,
        step: ChangeStep | None = None,
    ) -> AppliedChange:
        applied = await super().apply(
            repo=repo, proposal=proposal, prompt=prompt, branch=branch, onto=onto, step=step
        )
        self.pushes += 1
        push_config(repo, store_name=f"Corner Shop {self.pushes}")
        return applied


async def test_a_default_branch_that_outside_pushes_keep_moving_ends_the_request(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    engine = PushedAfterEveryApply()
    gated = LifecycleActivities(sessions, engine)
    async with running_workers(
        client,
        sessions,
        task_queue=task_queue,
        deploy_task_queue=deploy_queue,
        replace=[gated.apply_change],
    ):
        result = await outcome(lifecycle, await submit(lifecycle, shop, "set theme to dark"))

    assert result.status is PromptStatus.FAILED
    assert "no changeflow release made" in result.reason
    assert f"not shipped after {MAX_REBASE_ROUNDS} such moves" in result.reason
    # Each apply was followed by a push; the one that found the last push gives up.
    assert engine.pushes == MAX_REBASE_ROUNDS + 1
    refused = [d for d in result.deployments if d.environment is DeploymentEnvironment.PRODUCTION]
    assert len(refused) == MAX_REBASE_ROUNDS
    assert all(d.status is DeploymentStatus.FAILED for d in refused)
    # Production never ran the change; main holds the pushes only.
    assert git(shop.project.repo_url, "branch", "--list", "env/production") == ""
    assert config_on(shop, "main")["theme"] == "light"
