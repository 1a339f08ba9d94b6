"""A cancel at any point leaves every environment and the default branch as if the request never
ran, or, once production verified the release, is refused (CancelTooLate); and a database
outage while a check runs never fails a release whose check passed.

Through the typed client, with real workers, Temporal, PostgreSQL and git; the checks are the
sample project's real check command, held at a gate where the test must act in between.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlmodel import col, select
from temporalio import activity
from temporalio.client import Client

from activities.billing import BillingActivities
from activities.deploy_target import GitDeployTarget, VerificationResult
from activities.ledger import Ledger
from activities.releases import ReleaseActivities
from client.lifecycle import LifecycleClient, LifecycleRefused
from models import (
    ChangeJob,
    ChangeJobKind,
    Deployment,
    DeploymentEnvironment,
    DeploymentPlan,
    DeploymentStatus,
    PromptStatus,
)
from models.billing import HoldStatus
from models.db import SessionFactory, create_engine, session_factory
from scripts.sample_repo import SAFE_PROMPT
from tests.lifecycle_support import (
    Shop,
    balance,
    config_on,
    git,
    holds,
    make_shop,
    request_row,
    submit,
    wait_for_status,
)
from tests.pg_proxy import CuttableProxy
from tests.workers import running_workers
from workflows.contracts.billing import SettleHold, SettlementView
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

STAGING, PRODUCTION = DeploymentEnvironment.STAGING, DeploymentEnvironment.PRODUCTION
BASELINE_PROMPT = "set store_name to Baseline"  # shipped first, so every branch has a release


class Gate:
    """Holds a step once armed, until the test opens it; tells the test it was reached."""

    def __init__(self) -> None:
        self.armed = False
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    async def pass_through(self) -> None:
        if not self.armed:
            return
        self.reached.set()
        await self.opened.wait()


class CheckGate(GitDeployTarget):
    """The real check, held at the gate in one environment."""

    def __init__(self, workspace_dir: Path, environment: DeploymentEnvironment) -> None:
        super().__init__(workspace_dir)
        self.gate = Gate()
        self.environment = environment

    async def verify(self, **kwargs: object) -> VerificationResult:  # type: ignore[override]
        if kwargs["environment"] == self.environment.value:
            await self.gate.pass_through()
        return await super().verify(**kwargs)  # type: ignore[arg-type]


class SettleGate(BillingActivities):
    """Settling held at a gate: the lifecycle has heard production verified, not yet ended."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.gate = Gate()

    @activity.defn(name="settle_hold")
    async def settle_hold(self, request: SettleHold) -> SettlementView:
        await self.gate.pass_through()
        return await super().settle_hold(request)


def branches(shop: Shop) -> dict[str, str]:
    repo = shop.project.repo_url
    names = ("env/staging", "env/production", shop.project.default_branch)
    return {name: git(repo, "rev-parse", name) for name in names}


def assert_change_nowhere(shop: Shop, key: str, value: object) -> None:
    for branch in branches(shop):
        assert config_on(shop, branch).get(key) != value, (
            branch,
            git(shop.project.repo_url, "log", "--oneline", "--all", "--graph"),
        )


async def deployments_of(sessions: SessionFactory, request_id: uuid.UUID) -> list[Deployment]:
    async with sessions() as session:
        rows = await session.exec(
            select(Deployment)
            .join(DeploymentPlan, col(DeploymentPlan.id) == col(Deployment.plan_id))
            .where(DeploymentPlan.prompt_request_id == request_id)
            .order_by(col(Deployment.queued_at))
        )
        return list(rows.all())


async def assert_status_agrees_with_rows(
    lifecycle: LifecycleClient, sessions: SessionFactory, request_id: uuid.UUID
) -> list[Deployment]:
    """The status query, the request row and the deployment rows tell one story."""
    status = await lifecycle.status(request_id)
    row = await request_row(sessions, request_id)
    assert row is not None and row.status is status.status, (row, status.status)
    rows = {d.id: d for d in await deployments_of(sessions, request_id)}
    shown = {d.deployment_id: d.status for d in status.deployments}
    assert shown == {i: d.status for i, d in rows.items()}, (shown, status.deployments)
    return list(rows.values())


async def ship_baseline(lifecycle: LifecycleClient, shop: Shop) -> None:
    baseline = await submit(lifecycle, shop, BASELINE_PROMPT)
    result = await lifecycle.wait_for_outcome(baseline)
    assert result.status is PromptStatus.COMPLETED, result.reason


@pytest.mark.parametrize("environment", [STAGING, PRODUCTION])
async def test_a_cancel_while_an_environment_verifies_leaves_no_trace_of_the_change(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    environment: DeploymentEnvironment,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    target = CheckGate(tmp_path / "workspace", environment)
    releases = ReleaseActivities(sessions=sessions, target=target)
    async with running_workers(
        client,
        sessions,
        task_queue=task_queue,
        deploy_task_queue=deploy_queue,
        replace=[releases.run_check],
    ):
        await ship_baseline(lifecycle, shop)
        before, funds = branches(shop), await balance(sessions, shop.account)
        target.gate.armed = True
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        await asyncio.wait_for(target.gate.reached.wait(), 60)
        status = await lifecycle.status(request_id)
        assert [(d.environment, d.status) for d in status.deployments][-1] == (
            environment,
            DeploymentStatus.VERIFYING,
        )
        await lifecycle.cancel(request_id, reason="not now")
        # The worst moment: the check passes just after the cancel, before hearing of it.
        target.gate.opened.set()
        result = await lifecycle.wait_for_outcome(request_id)

        assert result.status is PromptStatus.CANCELLED, result.reason
        # As if it never ran: every environment and the default branch as they were.
        assert branches(shop) == before
        assert_change_nowhere(shop, "theme", "dark")
        rows = await assert_status_agrees_with_rows(lifecycle, sessions, request_id)
    releases_of_change = [d for d in rows if d.commit_sha == result.commit_sha]
    assert {d.environment for d in releases_of_change} == (
        {STAGING} if environment is STAGING else {STAGING, PRODUCTION}
    )
    assert {d.status for d in releases_of_change} == {DeploymentStatus.ROLLED_BACK}
    undos = [d for d in rows if d.commit_sha != result.commit_sha]
    if environment is PRODUCTION:
        # Staging had succeeded: a deployment of its own restored and verified the release.
        staged = next(d for d in releases_of_change if d.environment is STAGING)
        assert [(d.environment, d.status, d.rollback_of_id) for d in undos] == [
            (STAGING, DeploymentStatus.SUCCEEDED, staged.id)
        ]
    else:
        assert undos == []
    # The change was applied before the cancel: its work is charged once, the rest released.
    assert result.tokens_used > 0
    assert funds - await balance(sessions, shop.account) == result.tokens_used
    assert HoldStatus.ACTIVE not in {h.status for h in await holds(sessions, shop)}


async def test_a_cancel_while_production_waits_in_its_lane_restores_staging(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    target = CheckGate(tmp_path / "workspace", PRODUCTION)
    releases = ReleaseActivities(sessions=sessions, target=target)
    async with running_workers(
        client,
        sessions,
        task_queue=task_queue,
        deploy_task_queue=deploy_queue,
        replace=[releases.run_check],
    ):
        target.gate.armed = True
        # Another request's production release holds the lane (its check is held).
        ahead = await submit(lifecycle, shop, BASELINE_PROMPT)
        await asyncio.wait_for(target.gate.reached.wait(), 60)
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        await wait_for_status(
            lifecycle,
            request_id,
            lambda s: any(
                d.environment is PRODUCTION and (d.queue_position or 0) > 0 for d in s.deployments
            ),
        )
        assert config_on(shop, "env/staging")["theme"] == "dark"  # staging runs it now
        await lifecycle.cancel(request_id)
        result = await lifecycle.wait_for_outcome(request_id)
        target.gate.opened.set()
        assert (await lifecycle.wait_for_outcome(ahead)).status is PromptStatus.COMPLETED

        assert result.status is PromptStatus.CANCELLED, result.reason
        rows = await assert_status_agrees_with_rows(lifecycle, sessions, request_id)
    # Staging has the release before the cancelled one back; the other request shipped whole.
    assert_change_nowhere(shop, "theme", "dark")
    shipped = git(shop.project.repo_url, "rev-parse", shop.project.default_branch)
    assert set(branches(shop).values()) == {shipped}
    assert {config_on(shop, b)["store_name"] for b in branches(shop)} == {"Baseline"}
    staged = next(d for d in rows if d.commit_sha == result.commit_sha and d.environment is STAGING)
    assert staged.status is DeploymentStatus.ROLLED_BACK
    waiting = next(d for d in rows if d.environment is PRODUCTION)
    assert waiting.status is DeploymentStatus.CANCELLED and waiting.started_at is None


async def test_a_cancel_after_production_verified_is_refused_and_the_request_completes(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    settling = SettleGate(Ledger(sessions))
    async with running_workers(
        client,
        sessions,
        task_queue=task_queue,
        deploy_task_queue=deploy_queue,
        replace=[settling.settle_hold],
    ):
        settling.gate.armed = True
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        await asyncio.wait_for(settling.gate.reached.wait(), 60)
        live = next(
            d
            for d in (await lifecycle.status(request_id)).deployments
            if d.environment is PRODUCTION
        )
        with pytest.raises(LifecycleRefused) as refused:
            await lifecycle.cancel(request_id, reason="too late")
        assert refused.value.error_type == ErrorType.CANCEL_TOO_LATE
        assert str(live.deployment_id) in str(refused.value) and "rollback" in str(refused.value)
        # A plain Temporal cancel (no signed decision) that comes now changes nothing either.
        await client.get_workflow_handle(prompt_request_workflow_id(request_id)).cancel()
        settling.gate.opened.set()
        result = await lifecycle.wait_for_outcome(request_id)

        assert result.status is PromptStatus.COMPLETED, result.reason
        rows = await assert_status_agrees_with_rows(lifecycle, sessions, request_id)
    assert {(d.environment, d.status) for d in rows} == {
        (STAGING, DeploymentStatus.SUCCEEDED),
        (PRODUCTION, DeploymentStatus.SUCCEEDED),
    }
    assert {config_on(shop, b)["theme"] for b in branches(shop)} == {"dark"}
    assert result.tokens_settled == result.tokens_used > 0


@pytest_asyncio.fixture
async def proxy(database_url: str) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(database_url)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_a_database_outage_after_a_passing_check_does_not_fail_the_release(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    proxy: CuttableProxy,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    engine = create_engine(proxy.url)
    through_proxy = session_factory(engine)  # what the workers use: the outage is theirs
    target = CheckGate(tmp_path / "workspace", STAGING)
    releases = ReleaseActivities(sessions=through_proxy, target=target)
    funds = await balance(sessions, shop.account)
    try:
        async with running_workers(
            client,
            through_proxy,
            task_queue=task_queue,
            deploy_task_queue=deploy_queue,
            replace=[releases.run_check],
        ):
            target.gate.armed = True
            request_id = await submit(lifecycle, shop, SAFE_PROMPT)
            await asyncio.wait_for(target.gate.reached.wait(), 60)
            # PostgreSQL goes away as the check starts, for longer than a failover takes.
            await proxy.cut()
            target.gate.opened.set()
            await asyncio.sleep(40)
            await proxy.restore()
            result = await lifecycle.wait_for_outcome(request_id)
    finally:
        await engine.dispose()

    assert result.status is PromptStatus.COMPLETED, result.reason
    rows = await deployments_of(sessions, request_id)
    # No rollback: only the check decides that a release is bad, and it passed.
    assert [(d.environment, d.status, d.rollback_of_id) for d in rows] == [
        (STAGING, DeploymentStatus.SUCCEEDED, None),
        (PRODUCTION, DeploymentStatus.SUCCEEDED, None),
    ]
    async with sessions() as session:
        checks = (
            await session.exec(
                select(ChangeJob).where(
                    ChangeJob.deployment_id == rows[0].id,
                    ChangeJob.kind == ChangeJobKind.VALIDATION,
                )
            )
        ).all()
    # The check ran once: its verdict was kept through the outage, not found again.
    assert [(j.attempts, j.details.get("ok")) for j in checks] == [(1, True)]
    assert {config_on(shop, b)["theme"] for b in branches(shop)} == {"dark"}
    assert funds - await balance(sessions, shop.account) == result.tokens_used > 0
