"""A change can never switch off its own verification, through the real lifecycle: a model's
answer that rewrites check.py (what the project's check command runs) to always pass is rated
critical with the reason named, waits for people under every policy, and the approval
notification and `changeflow request show` say so. Real workers, Temporal, PostgreSQL and git,
a local stand-in of an OpenAI-compatible endpoint (scripts/model_stand_in.py) and a webhook
receiver (tests/webhook_receiver.py)."""

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlmodel import col, select
from temporalio.client import Client

from activities.notifications import TenantWebhooks, new_signing_secret
from client.lifecycle import LifecycleClient
from infra.settings import Settings
from models import (
    ApprovalPolicy,
    Deployment,
    DeploymentPlan,
    PlanApprovalStatus,
    PromptStatus,
    RiskLevel,
)
from models.db import SessionFactory
from scripts.model_stand_in import Reply, RunningStandIn, StandIn, edit_block
from tests.cli_support import ok
from tests.commerce_support import connector_service, key_spec
from tests.lifecycle_support import (
    Shop,
    config_on,
    git,
    make_shop,
    plan_awaiting_approval,
    submit,
)
from tests.model_engine_support import API_KEY, THEME_DARK, model_settings, use_model_engine
from tests.webhook_receiver import webhook_receiver
from tests.workers import running_workers

pytestmark = pytest.mark.asyncio(loop_scope="session")

DISABLE_PROMPT = "The storefront check keeps failing our deploys; make it stop failing."
# The answer of the issue: check.py still runs, but always exits 0.
ALWAYS_PASSES = edit_block("check.py", "    sys.exit(main())\n", "    sys.exit(0)\n")
REASON = "changes what verifies it: check.py (run by the check command)"
THEME_PROMPT = "Please switch the storefront to the dark theme."


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    model = StandIn(api_key=API_KEY)
    server = RunningStandIn(model)
    model.base_url = server.base_url  # type: ignore[attr-defined]
    yield model
    server.stop()


@pytest.fixture
def settings(stand_in: StandIn, task_queue: str, deploy_queue: str, tmp_path: Path) -> Settings:
    settings = model_settings(
        stand_in.base_url,  # type: ignore[attr-defined]
        task_queue,
        deploy_queue,
        tmp_path / "workspace",
    )
    # A key ring, so the tenant's webhook secret can be stored encrypted.
    return settings.model_copy(update={"credential_keys": SecretStr(key_spec("k1"))})


async def model_shop(sessions: SessionFactory, tmp_path: Path, **policy: Any) -> Shop:
    shop = await make_shop(
        sessions, tmp_path, policy=ApprovalPolicy(tenant_id=uuid.UUID(int=0), **policy)
    )
    await use_model_engine(sessions, shop)
    return shop


async def rows_of(
    sessions: SessionFactory, request_id: uuid.UUID
) -> tuple[list[DeploymentPlan], list[Deployment]]:
    async with sessions() as session:
        plans = list(
            (
                await session.exec(
                    select(DeploymentPlan).where(DeploymentPlan.prompt_request_id == request_id)
                )
            ).all()
        )
        deployments = await session.exec(
            select(Deployment).where(col(Deployment.plan_id).in_([p.id for p in plans]))
        )
        return plans, list(deployments.all())


def released_branches(shop: Shop) -> str:
    return git(shop.project.repo_url, "branch", "--list", "env/*")


async def test_a_model_answer_that_makes_the_check_always_pass_waits_for_people_and_says_why(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    env: dict[str, str],
    stand_in: StandIn,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # The default policy: the system approves low risk by itself, critical needs two people.
    shop = await model_shop(sessions, tmp_path)
    stand_in.script = [Reply(ALWAYS_PASSES)]
    secret = new_signing_secret()
    async with (
        webhook_receiver(secret) as receiver,
        running_workers(client, sessions, settings),
    ):
        webhooks = TenantWebhooks(sessions, connector_service(settings, sessions, client))
        await webhooks.set(shop.tenant.id, url=receiver.url, secret=secret)
        request_id = await submit(lifecycle, shop, DISABLE_PROMPT)
        status, plan = await plan_awaiting_approval(lifecycle, request_id)
        await receiver.wait_for("approval.requested")
        shown = await ok(env, "request", "show", str(request_id))
        shown_json = (await ok(env, "request", "show", str(request_id), "--json")).json
        # One person is not enough: the policy's critical level asks for two.
        after_one = await lifecycle.approve(
            request_id, user_id=shop.admins[0].id, content_hash=plan.content_hash
        )
        plans, deployments = await rows_of(sessions, request_id)
        await lifecycle.reject(
            request_id, user_id=shop.admins[1].id, content_hash=plan.content_hash, reason="no"
        )
        result = await lifecycle.wait_for_outcome(request_id)

    # Rated the highest level, with the reason first; people must decide.
    assert status.status is PromptStatus.AWAITING_APPROVAL
    assert plan.risk_level is RiskLevel.CRITICAL
    assert plan.risk_reasons[0] == REASON
    assert plan.changes_verification == ["check.py (run by the check command)"]
    assert plan.approvals_required == 2
    assert after_one.status is PromptStatus.AWAITING_APPROVAL
    [row] = plans
    assert row.risk_level is RiskLevel.CRITICAL and row.risk_reasons[0] == REASON
    # After one approval of two: still pending, never auto_approved, nothing released.
    assert row.approval_status is PlanApprovalStatus.PENDING
    assert deployments == [] and released_branches(shop) == ""
    assert "sys.exit(main())" in git(shop.project.repo_url, "show", "main:check.py")
    assert result.status is PromptStatus.REJECTED

    # The notification says so, with the files and their line counts.
    [requested] = receiver.of_type("approval.requested")
    approval = requested.event["approval"]
    assert requested.verified
    assert approval["risk_level"] == "critical" and approval["risk_reasons"][0] == REASON
    assert approval["changes_verification"] == ["check.py (run by the check command)"]
    assert approval["files"] == [
        {"path": "check.py", "status": "modified", "added": 1, "removed": 1}
    ]
    assert approval["approvals_required"] == 2

    # So does `request show`, above the diff it prints.
    out = shown.out
    assert out.startswith(
        "This change edits what verifies it: check.py (run by the check command)."
    )
    assert "the system never approves it by itself: it needs 2 approval(s)" in out
    assert f"risk      critical: {REASON}" in out
    assert "-    sys.exit(main())" in out and "+    sys.exit(0)" in out
    assert "check.py  modified  +1 -1" in out
    assert shown_json["plan"]["changes_verification"] == ["check.py (run by the check command)"]
    assert shown_json["plan"]["diff"] == row.diff


async def test_no_auto_approve_ceiling_lets_a_change_to_its_own_check_through(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    stand_in: StandIn,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # A tenant that lets the system approve everything, and asks three people for critical.
    shop = await model_shop(
        sessions,
        tmp_path,
        auto_approve_max_risk=RiskLevel.CRITICAL,
        approvals_required={"low": 1, "medium": 1, "high": 1, "critical": 3},
    )
    stand_in.script = [
        Reply(edit_block("config.json", *THEME_DARK), when="dark theme"),
        Reply(ALWAYS_PASSES, when="stop failing"),
    ]
    async with running_workers(client, sessions, settings):
        # An ordinary change is approved by the system and ships, as the ceiling says...
        theme = await lifecycle.wait_for_outcome(await submit(lifecycle, shop, THEME_PROMPT))
        assert theme.status is PromptStatus.COMPLETED, theme.reason
        # ...but one that rewrites the check waits for the three approvals critical asks for.
        request_id = await submit(lifecycle, shop, DISABLE_PROMPT)
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        plans, deployments = await rows_of(sessions, request_id)
        await lifecycle.cancel(request_id)
        await lifecycle.wait_for_outcome(request_id)

    assert config_on(shop, "main")["theme"] == "dark"
    assert plan.risk_level is RiskLevel.CRITICAL and plan.risk_reasons[0] == REASON
    assert plan.approvals_required == 3
    [row] = plans
    assert row.approval_status is PlanApprovalStatus.PENDING
    assert deployments == []
    assert "sys.exit(main())" in git(shop.project.repo_url, "show", "main:check.py")
