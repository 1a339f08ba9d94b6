"""The statements the operator's lists read (models/queries.py), run against PostgreSQL: each
holds one tenant's rows, in the order people read them, filtered and cut as asked."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from activities.ledger import Ledger
from models import (
    Deployment,
    DeploymentEnvironment,
    DeploymentPlan,
    ModuleExecution,
    PromptRequest,
    PromptStatus,
    queries,
)
from models.commerce import ModuleKind
from models.db import SessionFactory
from tests.factories import make_funded_account, make_project, make_tenant, make_user

DAY_ONE = datetime(2026, 3, 1, 9, tzinfo=UTC)


async def add(sessions: SessionFactory, *rows: Any) -> None:
    async with sessions() as session:
        session.add_all(rows)
        await session.commit()


async def rows(sessions: SessionFactory, statement: Any) -> list[Any]:
    async with sessions() as session:
        return list((await session.exec(statement)).all())


async def test_a_row_is_found_by_what_a_person_types_in_its_own_tenant_only(
    sessions: SessionFactory,
) -> None:
    shop = await make_tenant(sessions, name="Corner Shop")
    other = await make_tenant(sessions, name="Other Shop")
    bob = await make_user(sessions, tenant=shop, email="bob@corner.example")
    project = await make_project(sessions, tenant=shop)

    assert [t.id for t in await rows(sessions, queries.tenant(shop.slug))] == [shop.id]
    assert [t.id for t in await rows(sessions, queries.tenant(str(shop.id)))] == [shop.id]
    assert [u.id for u in await rows(sessions, queries.user(shop.id, "BOB@corner.example"))] == [
        bob.id
    ]
    assert [u.id for u in await rows(sessions, queries.user(shop.id, str(bob.id)))] == [bob.id]
    assert await rows(sessions, queries.user(other.id, "bob@corner.example")) == []
    assert await rows(sessions, queries.user(other.id, str(bob.id))) == []
    assert [p.id for p in await rows(sessions, queries.project(shop.id, project.slug))] == [
        project.id
    ]
    assert await rows(sessions, queries.project(other.id, project.slug)) == []
    assert await rows(sessions, queries.tenant("no-such-shop")) == []


async def test_whole_lists_are_the_tenants_rows_oldest_first(sessions: SessionFactory) -> None:
    shop = await make_tenant(sessions, name="Corner Shop")
    other = await make_tenant(sessions, name="Other Shop")
    first = await make_user(sessions, tenant=shop)
    second = await make_user(sessions, tenant=shop)
    await make_user(sessions, tenant=other)
    storefront = await make_project(sessions, tenant=shop, name="Storefront")
    await make_project(sessions, tenant=other)

    assert [t.id for t in await rows(sessions, queries.tenants())] == [shop.id, other.id]
    assert [u.id for u in await rows(sessions, queries.users(shop.id))] == [first.id, second.id]
    assert [p.id for p in await rows(sessions, queries.projects(shop.id))] == [storefront.id]


async def test_requests_are_the_tenants_newest_first_filtered_by_status_and_cut(
    sessions: SessionFactory,
) -> None:
    shop = await make_tenant(sessions, name="Corner Shop")
    other = await make_tenant(sessions, name="Other Shop")
    project = await make_project(sessions, tenant=shop)
    elsewhere = await make_project(sessions, tenant=other)
    statuses = [PromptStatus.COMPLETED, PromptStatus.FAILED, PromptStatus.COMPLETED]
    await add(
        sessions,
        *(
            PromptRequest(
                tenant_id=shop.id,
                project_id=project.id,
                prompt=f"change {day}",
                status=status,
                created_at=DAY_ONE + timedelta(days=day),
            )
            for day, status in enumerate(statuses)
        ),
        PromptRequest(
            tenant_id=other.id,
            project_id=elsewhere.id,
            prompt="another shop's change",
            created_at=DAY_ONE + timedelta(days=9),
        ),
    )

    def prompts(found: list[PromptRequest]) -> list[str]:
        return [r.prompt for r in found]

    newest = await rows(sessions, queries.newest_requests(shop.id, limit=20))
    assert prompts(newest) == ["change 2", "change 1", "change 0"]
    assert prompts(await rows(sessions, queries.newest_requests(shop.id, limit=2))) == [
        "change 2",
        "change 1",
    ]
    completed = queries.newest_requests(shop.id, status=PromptStatus.COMPLETED, limit=20)
    assert prompts(await rows(sessions, completed)) == ["change 2", "change 0"]


async def test_deployments_are_the_tenants_newest_first_of_one_project_when_asked(
    sessions: SessionFactory,
) -> None:
    shop = await make_tenant(sessions, name="Corner Shop")
    other = await make_tenant(sessions, name="Other Shop")
    storefront = await make_project(sessions, tenant=shop, name="Storefront")
    blog = await make_project(sessions, tenant=shop, name="Blog")
    elsewhere = await make_project(sessions, tenant=other)

    async def deploy(project: Any, day: int) -> uuid.UUID:
        request = PromptRequest(tenant_id=project.tenant_id, project_id=project.id, prompt="x")
        plan = DeploymentPlan(tenant_id=project.tenant_id, prompt_request_id=request.id)
        deployment = Deployment(
            tenant_id=project.tenant_id,
            project_id=project.id,
            plan_id=plan.id,
            environment=DeploymentEnvironment.STAGING,
            queued_at=DAY_ONE + timedelta(days=day),
        )
        await add(sessions, request)
        await add(sessions, plan)
        await add(sessions, deployment)
        return deployment.id

    first = await deploy(storefront, 0)
    blog_post = await deploy(blog, 1)
    latest = await deploy(storefront, 2)
    await deploy(elsewhere, 3)

    def ids(found: list[Deployment]) -> list[uuid.UUID]:
        return [d.id for d in found]

    assert ids(await rows(sessions, queries.newest_deployments(shop.id, limit=20))) == [
        latest,
        blog_post,
        first,
    ]
    of_storefront = queries.newest_deployments(shop.id, project_id=storefront.id, limit=20)
    assert ids(await rows(sessions, of_storefront)) == [latest, first]
    assert ids(await rows(sessions, queries.newest_deployments(shop.id, limit=1))) == [latest]


async def test_ledger_entries_are_the_accounts_newest_first(sessions: SessionFactory) -> None:
    shop = await make_tenant(sessions, name="Corner Shop")
    account = await make_funded_account(sessions, tenant=shop, balance=100)
    other = await make_funded_account(
        sessions, tenant=await make_tenant(sessions, name="Other"), balance=7
    )
    ledger = Ledger(sessions)
    try:
        await ledger.top_up(account.id, 20, key="second")
        await ledger.top_up(account.id, 30, key="third")
    finally:
        await ledger.close()

    async def amounts(account_id: uuid.UUID, limit: int) -> list[int]:
        return [
            e.amount for e in await rows(sessions, queries.newest_entries(account_id, limit=limit))
        ]

    entries = await rows(sessions, queries.newest_entries(account.id, limit=20))
    assert [(e.sequence, e.amount) for e in entries] == [(3, 30), (2, 20), (1, 100)]
    assert await amounts(account.id, 2) == [30, 20]
    assert await amounts(other.id, 20) == [7]


async def test_the_latest_execution_of_a_workflow_is_its_newest_run(
    sessions: SessionFactory,
) -> None:
    shop = await make_tenant(sessions, name="Corner Shop")
    runs = [
        ModuleExecution(
            tenant_id=shop.id,
            module=ModuleKind.ORDER_IMPORT,
            workflow_id=workflow_id,
            run_key=f"run-{hour}",
            created_at=DAY_ONE + timedelta(hours=hour),
        )
        for hour, workflow_id in enumerate(["import-a", "import-a", "import-b"])
    ]
    await add(sessions, *runs)
    newest, older = await rows(sessions, queries.latest_execution("import-a"))
    assert (newest.id, older.id) == (runs[1].id, runs[0].id)
    assert await rows(sessions, queries.latest_execution("import-c")) == []
