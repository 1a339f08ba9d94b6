"""`changeflow`, run as a person runs it (a process of its own), against the session's real
PostgreSQL and Temporal dev server, with workers serving this test's task queues."""

import sys
import uuid
from pathlib import Path

import pytest
from sqlmodel import select
from temporalio.client import Client

from infra.settings import DecisionTokenMode, Settings
from models import Deployment, DeploymentEnvironment, DeploymentStatus
from models.db import SessionFactory
from scripts.sample_repo import FAILS_IN_PRODUCTION_PROMPT, SAFE_PROMPT, create_sample_repo
from tests.cli_support import changeflow, ok, refused
from tests.workers import running_workers

pytestmark = pytest.mark.asyncio(loop_scope="session")


def signed_decisions(env: dict[str, str]) -> Settings:
    """Workers as in production: decisions need tokens, and (no CHANGEFLOW_DECISION_JWKS)
    they trust the development signer under the command's data folder, which the command
    signs with."""
    return Settings(
        task_queue=env["CHANGEFLOW_TASK_QUEUE"],
        deploy_task_queue=env["CHANGEFLOW_DEPLOY_TASK_QUEUE"],
        decision_tokens=DecisionTokenMode.REQUIRED,
        data_dir=Path(env["CHANGEFLOW_DATA_DIR"]),
    )


async def corner_shop(env: dict[str, str], repo_dir: Path, *, approvals: int = 1) -> str:
    """A tenant set up as the README's first run does; returns its slug."""
    created = (
        await ok(env, "tenant", "create", "Corner Shop", "--plan-tier", "growth", "--json")
    ).json
    slug: str = created["slug"]
    await ok(env, "user", "add", "alice@corner.example", "-t", slug, "--name", "Alice")
    await ok(env, "user", "add", "bob@corner.example", "-t", slug, "--role", "client_admin")
    await ok(env, "user", "add", "carol@corner.example", "-t", slug, "--role", "client_admin")
    await ok(
        env,
        "policy",
        "set",
        "-t",
        slug,
        "--auto-approve-max-risk",
        "never",
        *(arg for risk in ("low", "medium") for arg in ("--approvals", f"{risk}={approvals}")),
    )
    repo = create_sample_repo(repo_dir / f"shop-{uuid.uuid4().hex[:6]}")
    check = f"{sys.executable} -I check.py"
    await ok(env, "project", "create", "Storefront", "-t", slug, "--repo", str(repo),
             "--check-command", check)  # fmt: skip
    await ok(env, "tokens", "top-up", "50000", "-t", slug, "--key", "first-funding")
    return slug


async def test_a_newcomer_goes_from_nothing_to_a_deployed_change_with_the_command_alone(
    client: Client, sessions: SessionFactory, env: dict[str, str], tmp_path: Path
) -> None:
    slug = await corner_shop(env, tmp_path)
    # The same idempotency key tops up once.
    again = (await ok(env, "tokens", "top-up", "50000", "-t", slug, "--key", "first-funding",
                      "--json")).json  # fmt: skip
    assert again["balance_after"] == 50_000
    shown = (await ok(env, "tenant", "show", slug, "--json")).json
    assert shown["policy"]["auto_approve_max_risk"] is None
    assert shown["policy"]["approvals_required"]["low"] == 1
    assert {u["email"]: u["role"] for u in shown["users"]} == {
        "alice@corner.example": "client_operator",
        "bob@corner.example": "client_admin",
        "carol@corner.example": "client_admin",
    }

    async with running_workers(client, sessions, signed_decisions(env)):
        submitted = await ok(env, "request", "submit", SAFE_PROMPT, "-t", slug,
                             "--project", "storefront", "-u", "alice@corner.example",
                             "--wait", "--json")  # fmt: skip
        waiting = submitted.json
        assert waiting["status"] == "awaiting_approval"
        # Progress went to stderr, so stdout is one JSON document. (Planning can be over before
        # the first look, so only the state it stopped at is sure to be shown.)
        assert "awaiting_approval - 0 of 1 approvals" in submitted.err
        request_id = waiting["prompt_request_id"]
        plan = waiting["plan"]

        show = (await ok(env, "request", "show", request_id)).out
        assert f"risk      {plan['risk_level']}: {plan['risk_reasons'][0]}" in show
        assert f"estimate  {plan['token_estimate']:,} tokens" in show
        assert plan["diff_summary"].splitlines()[0] in show
        assert "approvals 0 of 1" in show

        error = await refused(env, "SelfApproval", "request", "approve", request_id,
                              "-u", "alice@corner.example")  # fmt: skip
        assert "requester" in error["message"]
        await refused(env, "StalePlanHash", "request", "approve", request_id,
                      "-u", "bob@corner.example", "--plan", "0000")  # fmt: skip

        approved = await ok(env, "request", "approve", request_id, "-u", "bob@corner.example",
                            "--plan", plan["content_hash"][:12], "--wait")  # fmt: skip
        assert "production deployment: succeeded" in approved.out
        assert f"request {request_id}: completed" in approved.out
        done = (await ok(env, "request", "show", request_id, "--json")).json
        assert done["status"] == "completed"
        assert [a["decision"] for a in done["approvals"]] == ["approve"]

        balance = (await ok(env, "tokens", "balance", "-t", slug, "--json")).json
        assert balance["balance"] == 50_000 - done["tokens_settled"] > 0
        history = (await ok(env, "tokens", "history", "-t", slug, "--json")).json
        assert [e["kind"] for e in history] == ["settlement", "top_up"]

        deployments = (await ok(env, "deployment", "list", "-t", slug, "--json")).json
        assert sorted((d["environment"], d["status"]) for d in deployments) == [
            ("production", "succeeded"),
            ("staging", "succeeded"),
        ]
        live = next(d["id"] for d in deployments if d["environment"] == "production")
        # Who asks is checked before the target (an unsigned rollback is TokenRequired).
        await refused(env, "RollbackTargetIsLive", "deployment", "rollback", live,
                      "-u", "bob@corner.example", "--wait")  # fmt: skip


async def test_a_rollback_restores_an_earlier_release_and_cancel_and_reject_end_requests(
    client: Client, sessions: SessionFactory, env: dict[str, str], tmp_path: Path
) -> None:
    slug = await corner_shop(env, tmp_path)
    submit = ("request", "submit", "-t", slug, "--project", "storefront",
              "-u", "alice@corner.example", "--wait", "--json")  # fmt: skip
    async with running_workers(client, sessions, signed_decisions(env)):
        first = (await ok(env, *submit[:2], SAFE_PROMPT, *submit[2:])).json["prompt_request_id"]
        await ok(env, "request", "approve", first, "-u", "bob@corner.example", "--wait")

        # Revised while waiting: planned again, and the new plan is the one that waits.
        second = (await ok(env, *submit[:2], "set theme to light", *submit[2:])).json
        revised = (await ok(env, "request", "revise", second["prompt_request_id"],
                            "set currency to USD", "-u", "alice@corner.example",
                            "--wait", "--json")).json  # fmt: skip
        assert revised["status"] == "awaiting_approval"
        assert revised["plan"]["content_hash"] != second["plan"]["content_hash"]
        assert revised["plan"]["revision"] == 2
        rejected = (await ok(env, "request", "reject", second["prompt_request_id"],
                             "-u", "carol@corner.example", "--reason", "not this week",
                             "--json")).json  # fmt: skip
        assert rejected["status"] == "rejected"
        await refused(env, "RequestClosed", "request", "approve", second["prompt_request_id"],
                      "-u", "bob@corner.example")  # fmt: skip

        third = (await ok(env, *submit[:2], "set theme to light", *submit[2:])).json
        # A signed cancel names who cancels (-u): the requester may.
        cancelled = await ok(env, "request", "cancel", third["prompt_request_id"],
                             "-u", "alice@corner.example",
                             "--reason", "changed my mind", "--wait", "--json")  # fmt: skip
        assert cancelled.json["status"] == "cancelled"

        # A lifecycle that ends without completing exits 3 under --wait.
        failing = (await ok(env, *submit[:2], FAILS_IN_PRODUCTION_PROMPT, *submit[2:])).json
        ended = await changeflow(env, "request", "approve", failing["prompt_request_id"],
                                 "-u", "bob@corner.example", "--wait", "--json")  # fmt: skip
        assert ended.code == 3, ended.out + ended.err
        assert ended.json["status"] in ("rolled_back", "failed")

        async with sessions() as session:
            earlier = (
                await session.exec(
                    select(Deployment)
                    .where(Deployment.environment == DeploymentEnvironment.STAGING)
                    .where(Deployment.status == DeploymentStatus.SUCCEEDED)
                    .where(Deployment.rollback_of_id == None)  # noqa: E711
                )
            ).all()
        # Staging runs the second release now; the first is an earlier successful one.
        target = min(earlier, key=lambda d: d.queued_at)
        rollback = await ok(env, "deployment", "rollback", str(target.id),
                            "-u", "bob@corner.example", "--reason", "drill",
                            "--wait", "--json")  # fmt: skip
        assert rollback.json["result"]["status"] == "succeeded"
        assert rollback.json["result"]["commit_sha"] == target.commit_sha


async def test_refusals_name_their_type_and_exit_1(
    sessions: SessionFactory, env: dict[str, str], tmp_path: Path
) -> None:
    slug = await corner_shop(env, tmp_path)
    await refused(env, "UnknownTenant", "user", "list", "-t", "no-such-shop")
    await refused(env, "SlugTaken", "tenant", "create", "Corner Shop")
    await refused(env, "EmailTaken", "user", "add", "BOB@corner.example", "-t", slug)
    await refused(env, "InvalidRequest", "user", "set-role", "bob@corner.example", "founder",
                  "-t", slug)  # fmt: skip
    await refused(env, "UnknownUser", "user", "set-role", "dan@corner.example", "client_admin",
                  "-t", slug)  # fmt: skip
    error = await refused(env, "InvalidPolicy", "policy", "set", "-t", slug,
                          "--approvals", "high=0")  # fmt: skip
    assert "high needs at least 1 approval" in error["message"]
    await refused(env, "InvalidAmount", "tokens", "top-up", "0", "-t", slug)
    await refused(env, "UnknownProject", "project", "show", "shop-two", "-t", slug)
    await refused(env, "UnknownRequest", "request", "show", str(uuid.uuid4()))
    await refused(env, "EmptyPrompt", "request", "submit", "  ", "-t", slug,
                  "--project", "storefront", "-u", "alice@corner.example")  # fmt: skip
    await refused(env, "InvalidPeriod", "tokens", "grant", "-t", slug, "--period", "2026-13")
    # A plan grant is once per period: the second replays the first.
    first = (await ok(env, "tokens", "grant", "-t", slug, "--period", "2026-01", "--json")).json
    again = (await ok(env, "tokens", "grant", "-t", slug, "--period", "2026-01", "--json")).json
    assert first == again and first["amount"] == 2_000_000  # the growth tier's grant
    viewer = (await ok(env, "user", "set-role", "carol@corner.example", "client_viewer",
                       "-t", slug, "--json")).json  # fmt: skip
    assert viewer["role"] == "client_viewer"
    # Nothing above changed the tenant otherwise.
    users = (await ok(env, "user", "list", "-t", slug, "--json")).json
    assert {u["email"]: u["role"] for u in users}["bob@corner.example"] == "client_admin"
    balance = (await ok(env, "tokens", "balance", "-t", slug, "--json")).json
    assert balance["balance"] == 50_000 + 2_000_000


async def test_configuration_that_cannot_work_exits_2(env: dict[str, str]) -> None:
    bad_url = await changeflow({**env, "DATABASE_URL": "mysql://x@localhost/db"},
                               "tenant", "list", "--json")  # fmt: skip
    assert bad_url.code == 2
    assert bad_url.json["error"]["type"] == "ConfigurationError"
    assert "DATABASE_URL" in bad_url.json["error"]["message"]
    unreachable = await changeflow({**env, "TEMPORAL_ADDRESS": "127.0.0.1:9"},
                                   "request", "show", str(uuid.uuid4()))  # fmt: skip
    assert unreachable.code == 2
    assert "cannot reach Temporal" in unreachable.err
