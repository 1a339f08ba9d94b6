"""The demo's seeding and the lifecycle benchmark's baseline, on the real servers."""

import uuid
from pathlib import Path

from sqlmodel import select
from temporalio.client import Client
from temporalio.worker import Worker

from activities.ledger import Ledger
from models import ApprovalPolicy, Project, RiskLevel, UserRole
from models.db import SessionFactory
from scripts.bench_bare import BareChildWorkflow, BareShape, BareWorkflow, bare_step
from scripts.bench_lifecycle import Shape, activity_breakdown, lifecycle_shape, percentile
from scripts.demo import seed_shop


async def test_the_demo_shop_waits_for_people_and_is_funded_through_the_ledger(
    sessions: SessionFactory, tmp_path: Path
) -> None:
    shop = await seed_shop(sessions, tmp_path, funds=1234)
    automatic = await seed_shop(sessions, tmp_path, human_approval=False)
    async with sessions() as session:
        policies = {p.tenant_id: p for p in (await session.exec(select(ApprovalPolicy))).all()}
        project = await session.get(Project, shop.project.id)
    # Stored as NULL (never automatic), not the column's default.
    assert policies[shop.tenant.id].auto_approve_max_risk is None
    assert policies[automatic.tenant.id].auto_approve_max_risk == RiskLevel.CRITICAL
    assert shop.requester.role is UserRole.CLIENT_OPERATOR
    assert shop.approver.role.value in policies[shop.tenant.id].approver_roles
    assert project is not None and (Path(project.repo_url) / ".git").is_dir()
    balance = await Ledger(sessions).balance(shop.account_id)
    assert (balance.balance, balance.held) == (1234, 0)


async def test_the_bare_baseline_has_the_shape_it_was_given(
    client: Client, task_queue: str
) -> None:
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[BareWorkflow, BareChildWorkflow],
        activities=[bare_step],
    ):
        workflow_id = f"bench-bare-{uuid.uuid4()}"
        done = await client.execute_workflow(
            BareWorkflow.run,
            BareShape(run_id="t", activities=3, children=2, child_activities=4),
            id=workflow_id,
            task_queue=task_queue,
        )
        assert done == 3 + 2 * 4
        # The benchmark reads a lifecycle's shape from histories the same way.
        assert await lifecycle_shape(client, workflow_id) == Shape(3, 2, 4)
        breakdown = await activity_breakdown(client, [workflow_id])
        assert breakdown["bench_bare_step"].count == 11


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 95) == 19.0
    assert percentile(values, 50) == 10.0
    assert percentile([3.0], 95) == 3.0
