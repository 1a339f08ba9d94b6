"""Requests approved on one project all ship, like a merge queue's changes: each is staged on
top of what shipped before it, a change is never failed because another shipped first, and a
true conflict is planned again on the new base and waits for approval of its new diff. Real
workers, Temporal, PostgreSQL and git; asserted on the repository's files, the rows and the
ledger."""

import asyncio
import random
import uuid
from pathlib import Path

import pytest
from sqlmodel import col, select
from temporalio.client import Client

from activities.notifications import new_signing_secret
from client.lifecycle import LifecycleClient, LifecycleRefused
from models import (
    Deployment,
    DeploymentEnvironment,
    DeploymentStatus,
    PromptStatus,
    TokenTransactionKind,
)
from models.billing import HoldStatus
from models.db import SessionFactory
from tests.commerce_support import commerce_settings
from tests.lifecycle_support import (
    FUNDS,
    Shop,
    assert_default_branch_is_production,
    balance,
    config_on,
    entries,
    git,
    holds,
    human_policy,
    make_shop,
    plan_awaiting_approval,
    push_config,
    request_row,
    submit,
    wait_for_status,
)
from tests.test_notifications import with_webhook
from tests.webhook_receiver import webhook_receiver
from tests.workers import running_workers
from workflows.contracts.errors import ErrorType
from workflows.contracts.lifecycle import REPLANNED_ON_NEW_BASE, PromptRequestResult

pytestmark = pytest.mark.asyncio(loop_scope="session")

REQUESTED = "approval.requested"


async def approve(lifecycle: LifecycleClient, shop: Shop, request_id: uuid.UUID, hash: str) -> None:
    for admin in shop.admins:
        await lifecycle.approve(request_id, user_id=admin.id, content_hash=hash)


async def outcome(
    lifecycle: LifecycleClient, request_id: uuid.UUID, within: float = 120
) -> PromptRequestResult:
    try:
        async with asyncio.timeout(within):
            return await lifecycle.wait_for_outcome(request_id)
    except TimeoutError:
        status = await lifecycle.status(request_id)
        raise AssertionError(f"no outcome; the request is at {status!r}") from None


def file_on(shop: Shop, branch: str, path: str) -> str:
    return git(shop.project.repo_url, "show", f"{branch}:{path}")


async def debited(sessions: SessionFactory, shop: Shop, request_id: uuid.UUID) -> list[int]:
    """What the ledger took from the account for one request (settlements and charges)."""
    return [
        e.amount
        for e in await entries(sessions, shop.account)
        if e.kind in (TokenTransactionKind.SETTLEMENT, TokenTransactionKind.CHARGE)
        and e.description.startswith(f"prompt request {request_id}")
    ]


async def test_two_new_keys_planned_from_one_base_both_ship_without_a_new_approval(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    """Both new keys belong at one place of config.json (before store_name): git's merge
    conflicts there, the change made again on the new head edits the approved lines."""
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    prompts = ["set banner to Summer sale", "set logo to shop.png"]
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        requests = [await submit(lifecycle, shop, p) for p in prompts]
        plans = [(await plan_awaiting_approval(lifecycle, r))[1] for r in requests]
        for request_id, plan in zip(requests, plans, strict=True):
            await approve(lifecycle, shop, request_id, plan.content_hash)
        results = [await outcome(lifecycle, r) for r in requests]

    assert [r.status for r in results] == [PromptStatus.COMPLETED] * 2, results
    assert [r.content_hash for r in results] == [p.content_hash for p in plans]
    for branch in ("main", "env/production"):
        config = config_on(shop, branch)
        assert (config["banner"], config["logo"]) == ("Summer sale", "shop.png")
    assert_default_branch_is_production(shop)


async def test_a_true_conflict_is_planned_again_and_ships_once_its_new_diff_is_approved(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    """Someone set the very line the approved change edits: the request is planned again on
    the new head, notified and held for approval of the new diff; nothing ships meanwhile."""
    settings = commerce_settings(task_queue, tmp_path)
    secret = new_signing_secret()
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    repo = shop.project.repo_url
    async with (
        webhook_receiver(secret) as receiver,
        running_workers(client, sessions, settings, deploy_task_queue=deploy_queue),
    ):
        await with_webhook(sessions, settings, client, shop, receiver.url, secret)
        request_id = await submit(lifecycle, shop, "set theme to dark")
        _, approved = await plan_awaiting_approval(lifecycle, request_id)
        pushed = push_config(repo, theme="light-blue", store_name="Corner Shop & Co")
        await approve(lifecycle, shop, request_id, approved.content_hash)
        waiting = await wait_for_status(
            lifecycle,
            request_id,
            lambda s: (
                s.status is PromptStatus.AWAITING_APPROVAL
                and s.plan is not None
                and s.plan.revision == 2
            ),
        )
        replanned = waiting.plan
        assert replanned is not None
        assert waiting.reason.startswith(REPLANNED_ON_NEW_BASE), waiting.reason
        assert "config.json" in waiting.reason
        assert replanned.content_hash != approved.content_hash
        await receiver.wait_for(REQUESTED, count=2)
        again = receiver.of_type(REQUESTED)[-1].event["approval"]
        assert again["revision"] == 2 and again["reason"].startswith(REPLANNED_ON_NEW_BASE)
        # The old approval approves nothing now, and nothing was released.
        with pytest.raises(LifecycleRefused) as stale:
            await lifecycle.approve(
                request_id, user_id=shop.admins[0].id, content_hash=approved.content_hash
            )
        assert stale.value.error_type == ErrorType.STALE_PLAN_HASH
        assert git(repo, "rev-parse", "main") == pushed
        assert git(repo, "branch", "--list", "env/*") == ""
        await approve(lifecycle, shop, request_id, replanned.content_hash)
        result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert result.content_hash == replanned.content_hash
    assert git(repo, "rev-parse", f"{result.commit_sha}^") == pushed
    for branch in ("main", "env/production"):
        config = config_on(shop, branch)
        assert (config["theme"], config["store_name"]) == ("dark", "Corner Shop & Co")
    assert_default_branch_is_production(shop)
    row = await request_row(sessions, request_id)
    assert row is not None and row.status is PromptStatus.COMPLETED
    assert sum(await debited(sessions, shop, request_id)) == row.tokens_used > 0
    assert all(h.status is not HoldStatus.ACTIVE for h in await holds(sessions, shop))


PAGES = ["contact", "faq", "blog", "returns", "careers"]
KEYS = {
    "banner": "Summer sale",
    "logo": "shop.png",
    "tagline": "Fresh finds",
    "analytics_id": "UA-1",
    "checkout.gift_wrap": True,
}


async def test_ten_requests_on_one_project_approved_in_random_order_all_ship(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    """Ten requests planned from one base, approved one by one in a random order while the
    ones approved before them ship: every one reaches production, whatever overtook it."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    prompts = [f"add a page {name}" for name in PAGES] + [
        f"set {key} to {'true' if value is True else value}" for key, value in KEYS.items()
    ]
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        requests = [await submit(lifecycle, shop, p) for p in prompts]
        plans = [(await plan_awaiting_approval(lifecycle, r))[1] for r in requests]
        assert len({p.plan_id for p in plans}) == len(requests)
        order = list(range(len(requests)))
        rng.shuffle(order)
        for index in order:
            await approve(lifecycle, shop, requests[index], plans[index].content_hash)
            await asyncio.sleep(rng.uniform(0, 1.5))  # the ones approved before ship meanwhile
        results = await asyncio.gather(*(outcome(lifecycle, r, within=600) for r in requests))

    assert [r.status for r in results] == [PromptStatus.COMPLETED] * len(requests), (
        f"seed {seed}",
        [(r.status, r.reason) for r in results],
    )
    # Every change is in the files of the default branch and of production.
    for branch in ("main", "env/production"):
        config = config_on(shop, branch)
        assert sorted(config["pages"]) == sorted(["home", "about", *PAGES]), (seed, config)
        for page in PAGES:
            assert file_on(shop, branch, f"pages/{page}.md").startswith("# ")
        assert (config["banner"], config["logo"], config["tagline"], config["analytics_id"]) == (
            "Summer sale",
            "shop.png",
            "Fresh finds",
            "UA-1",
        )
        assert config["checkout"]["gift_wrap"] is True
    assert_default_branch_is_production(shop)
    assert git(shop.project.repo_url, "rev-list", "--merges", "main") == ""
    shipped = git(shop.project.repo_url, "rev-list", "--first-parent", "--reverse", "main")
    assert sorted(shipped.splitlines()[1:]) == sorted(r.commit_sha or "" for r in results)

    async with sessions() as session:
        released = set(
            (
                await session.exec(
                    select(Deployment.commit_sha).where(
                        Deployment.project_id == shop.project.id,
                        Deployment.environment == DeploymentEnvironment.PRODUCTION,
                        Deployment.status == DeploymentStatus.SUCCEEDED,
                        col(Deployment.commit_sha).in_([r.commit_sha for r in results]),
                    )
                )
            ).all()
        )
    assert len(released) == len(requests)
    used = 0
    for request_id in requests:
        row = await request_row(sessions, request_id)
        assert row is not None and row.status is PromptStatus.COMPLETED
        # Settled once: what the ledger took is what the work used, however many rebases.
        assert sum(await debited(sessions, shop, request_id)) == row.tokens_used > 0
        used += row.tokens_used
    assert all(h.status is not HoldStatus.ACTIVE for h in await holds(sessions, shop))
    assert await balance(sessions, shop.account) == FUNDS - used


async def test_five_pages_on_each_of_two_projects_all_ship_under_the_default_policy(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
) -> None:
    """Submitted at once and approved by policy: each project's five pages end up listed and
    written in production, every request completed (each page has its own file and its place
    in `pages`; additions at one place are made again on the head, no approval needed)."""
    shops = [await make_shop(sessions, tmp_path / name) for name in ("one", "two")]
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        requests = [
            await submit(lifecycle, shop, f"add a page {page}") for shop in shops for page in PAGES
        ]
        results = await asyncio.gather(*(outcome(lifecycle, r, within=600) for r in requests))

    assert [r.status for r in results] == [PromptStatus.COMPLETED] * len(requests), [
        (r.status, r.reason) for r in results
    ]
    for shop in shops:
        for branch in ("main", "env/production"):
            assert sorted(config_on(shop, branch)["pages"]) == sorted(["home", "about", *PAGES])
            for page in PAGES:
                assert file_on(shop, branch, f"pages/{page}.md").startswith("# ")
        assert_default_branch_is_production(shop)
