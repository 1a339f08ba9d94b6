"""What the lifecycle tests share: a funded tenant with people and a sample project, and
helpers to read what the lifecycle wrote."""

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import select

from client.lifecycle import LifecycleClient
from models import (
    ApprovalPolicy,
    PlanTier,
    Project,
    PromptRequest,
    PromptStatus,
    Tenant,
    TokenAccount,
    TokenTransaction,
    TokenTransactionKind,
    User,
    UserRole,
)
from models.billing import TokenHold
from models.db import SessionFactory
from scripts.sample_repo import SAMPLE_CHECK_COMMAND, create_sample_repo
from tests.factories import make_funded_account, make_project, make_tenant, make_user
from workflows.contracts.lifecycle import PlanSummary, PromptRequestStatus

FUNDS = 100_000


@dataclass
class Shop:
    tenant: Tenant
    project: Project
    requester: User
    admins: list[User]
    viewer: User
    account: TokenAccount


async def make_shop(
    sessions: SessionFactory,
    repo_dir: Path,
    *,
    balance: int = FUNDS,
    policy: ApprovalPolicy | None = None,
    name: str = "Corner Shop",
) -> Shop:
    tenant = await make_tenant(sessions, name=name, plan_tier=PlanTier.GROWTH)
    repo = create_sample_repo(repo_dir / f"repo-{uuid.uuid4().hex[:6]}")
    project = await make_project(
        sessions, tenant=tenant, repo_url=str(repo), check_command=SAMPLE_CHECK_COMMAND
    )
    requester = await make_user(sessions, tenant=tenant, role=UserRole.CLIENT_ADMIN)
    admins = [await make_user(sessions, tenant=tenant, role=UserRole.CLIENT_ADMIN) for _ in "ab"]
    viewer = await make_user(sessions, tenant=tenant, role=UserRole.CLIENT_VIEWER)
    account = await make_funded_account(sessions, tenant=tenant, balance=balance)
    if policy is not None:
        policy.tenant_id = tenant.id
        async with sessions() as session:
            session.add(policy)
            await session.commit()
    return Shop(tenant, project, requester, admins, viewer, account)


def human_policy(**overrides: object) -> ApprovalPolicy:
    """Nothing is approved by the system: every plan waits for people."""
    fields: dict[str, object] = {
        "tenant_id": uuid.UUID(int=0),
        "auto_approve_max_risk": None,
        "approvals_required": {"low": 2, "medium": 2, "high": 2, "critical": 2},
    }
    fields.update(overrides)
    return ApprovalPolicy(**fields)  # type: ignore[arg-type]


async def submit(lifecycle: LifecycleClient, shop: Shop, prompt: str) -> uuid.UUID:
    return await lifecycle.submit(
        tenant_id=shop.tenant.id,
        project_id=shop.project.id,
        user_id=shop.requester.id,
        prompt=prompt,
    )


async def wait_for_status(
    lifecycle: LifecycleClient,
    request_id: uuid.UUID,
    condition: Callable[[PromptRequestStatus], bool],
    *,
    within: float = 60,
) -> PromptRequestStatus:
    """Poll the `status` query until condition holds."""
    async with asyncio.timeout(within):
        while True:
            try:
                status = await lifecycle.status(request_id)
                if condition(status):
                    return status
            except Exception:  # the workflow may not have started its first task yet
                pass
            await asyncio.sleep(0.1)


async def balance(sessions: SessionFactory, account: TokenAccount) -> int:
    async with sessions() as session:
        row = await session.get(TokenAccount, account.id)
        assert row is not None
        return row.balance


async def entries(sessions: SessionFactory, account: TokenAccount) -> list[TokenTransaction]:
    async with sessions() as session:
        rows = await session.exec(
            select(TokenTransaction).where(TokenTransaction.account_id == account.id)
        )
        return list(rows.all())


async def request_row(sessions: SessionFactory, request_id: uuid.UUID) -> PromptRequest | None:
    async with sessions() as session:
        return await session.get(PromptRequest, request_id)


async def holds(sessions: SessionFactory, shop: Shop) -> list[TokenHold]:
    async with sessions() as session:
        rows = await session.exec(select(TokenHold).where(TokenHold.tenant_id == shop.tenant.id))
        return list(rows.all())


async def settlements(sessions: SessionFactory, shop: Shop) -> list[TokenTransaction]:
    return [
        e
        for e in await entries(sessions, shop.account)
        if e.kind is TokenTransactionKind.SETTLEMENT
    ]


async def plan_awaiting_approval(
    lifecycle: LifecycleClient, request_id: uuid.UUID, *, within: float = 60
) -> tuple[PromptRequestStatus, PlanSummary]:
    """Wait until the request awaits approval; returns its status and the plan to decide on."""
    status = await wait_for_status(
        lifecycle, request_id, lambda s: s.status is PromptStatus.AWAITING_APPROVAL, within=within
    )
    assert status.plan is not None, status
    return status, status.plan


# --- the project's repository: what ships, and what the default branch holds ---


def git(repo: str | Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def config_on(shop: Shop, branch: str) -> dict[str, Any]:
    """config.json as `branch` of the shop's repository holds it."""
    return json.loads(git(shop.project.repo_url, "show", f"{branch}:config.json"))  # type: ignore[no-any-return]


def assert_default_branch_is_production(shop: Shop) -> None:
    """The invariant once no request of the project is in flight: the default branch holds
    exactly the tree production runs, so the next plan starts from what ships."""
    repo, main = shop.project.repo_url, shop.project.default_branch
    assert git(repo, "rev-parse", f"{main}^{{tree}}") == git(
        repo, "rev-parse", "env/production^{tree}"
    ), git(repo, "log", "--oneline", "--graph", "--all")


PUSHER = {
    "GIT_AUTHOR_NAME": "Someone",
    "GIT_AUTHOR_EMAIL": "someone@example.com",
    "GIT_COMMITTER_NAME": "Someone",
    "GIT_COMMITTER_EMAIL": "someone@example.com",
}


def push_config(repo: str | Path, branch: str = "main", **changes: object) -> str:
    """Someone outside changeflow commits an edit of config.json onto `branch` (a push);
    returns the new commit. Plumbing only: the repository has no work tree to edit."""
    config = json.loads(git(repo, "show", f"{branch}:config.json"))
    config.update(changes)
    run: dict[str, Any] = {"check": True, "capture_output": True, "text": True}
    env = {**os.environ, **PUSHER, "GIT_INDEX_FILE": str(Path(repo) / ".git" / "push-index")}

    def plumb(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], input=stdin, env=env, **run)
        return str(done.stdout).strip()

    blob = plumb("hash-object", "-w", "--stdin", stdin=json.dumps(config, indent=2) + "\n")
    plumb("read-tree", branch)
    plumb("update-index", "--cacheinfo", f"100644,{blob},config.json")
    commit = plumb("commit-tree", plumb("write-tree"), "-p", branch, "-m", "a push")
    plumb("update-ref", f"refs/heads/{branch}", commit)
    return commit
