"""`make demo`: two real lifecycles end to end on the embedded stack, with visible progress.

1. A safe change: planned, approved by a person, deployed to staging, verified, promoted to
   production, verified, tokens settled.
2. A change that passes staging but fails production's check: rolled back automatically to the
   release before it.
3. A free-text change made by the model engine, against a LOCAL STAND-IN of an OpenAI-compatible
   server (scripts/model_stand_in.py: scripted answers, real protocol; not a model), printing the
   edits, the usage the server reported and the tokens charged.
4. The tenant's shop, a LOCAL STAND-IN of Shopify's Admin GraphQL API (scripts/shopify_stand_in.py):
   a connector is created and tested, a first sync brings its orders and customers, the shop
   changes, an incremental sync brings only the change, and a report is computed from the rows
   (scripts/demo_commerce.py).
5. A change on GitHub, a LOCAL STAND-IN of it (scripts/github_stand_in/): the request becomes a
   pull request, the scripted CI goes green, staging and production are GitHub Deployments and
   changeflow merges it; prints the pull request's URL on the stand-in (scripts/demo_github.py).

Starts (or joins) the embedded PostgreSQL and Temporal dev server, migrates, seeds a demo tenant
(people, approval policy, a funded token account, a project whose repository is a sample
storefront under the data folder), runs a worker in this process, then prints the Web UI links
and the token balance before and after. On a terminal the stack and the worker keep running
afterwards (Ctrl-C stops them), so the links stay live; without one (CI, a pipe) the demo exits
by itself, and its last line is the command that brings the links back with the same data.
`--keep-running` / `--exit` force either; a `make dev` running already keeps them live too.
"""

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr
from sqlmodel import col, select
from temporalio.client import Client

from activities.ledger import Ledger
from client.connection import connect
from client.lifecycle import LifecycleClient
from infra.decision_signer import development_signer
from infra.entry_points import run_entry_point
from infra.settings import Settings
from models import (
    ApprovalPolicy,
    ChangeEngineKind,
    ModelCall,
    ModelCallOutcome,
    PlanTier,
    Project,
    RiskLevel,
    Tenant,
    User,
    UserRole,
)
from models.db import SessionFactory, create_engine, session_factory
from models.lifecycle import PromptStatus
from models.transitions import is_terminal
from scripts.demo_commerce import demo_credential_keys, run_commerce
from scripts.demo_github import RunRequest, run_github
from scripts.model_stand_in import Reply, RunningStandIn, StandIn, edit_block
from scripts.sample_repo import (
    FAILS_IN_PRODUCTION_PROMPT,
    SAFE_PROMPT,
    SAMPLE_CHECK_COMMAND,
    create_sample_repo,
)
from workers.devstack import embedded_stack
from workers.registry import Dependencies
from workers.worker import build_workers, run_until_stopped, stop_on_signals
from workflows.contracts.ids import deployment_workflow_id, prompt_request_workflow_id
from workflows.contracts.lifecycle import PromptRequestResult, PromptRequestStatus

DEMO_FUNDS = 50_000
MODEL_PROMPT = "Tell visitors on the about page that we ship to the whole EU."
MODEL_ANSWER = edit_block(
    "pages/about.md",
    "A family shop since 1998.\n",
    "A family shop since 1998.\nWe ship to the whole EU.\n",
)
LIFECYCLE_TIMEOUT_S = 180
STAND_IN_API_KEY = "sk-local-stand-in"


def model_stand_in(answers: int = 1) -> RunningStandIn:
    """The local stand-in of an OpenAI-compatible server, answering MODEL_PROMPT `answers`
    times with MODEL_ANSWER."""
    return RunningStandIn(
        StandIn(
            api_key=STAND_IN_API_KEY,
            script=[Reply(MODEL_ANSWER, when="whole EU", times=answers)],
            # Like vLLM: a tokenizer endpoint, so the hold is the model's own count.
            server="vllm",
        )
    )


def stand_in_model_settings(stand_in: RunningStandIn) -> dict[str, Any]:
    """Settings that point the model engine at the stand-in."""
    return {
        "model_base_url": stand_in.base_url,
        "model_name": stand_in.stand_in.model,
        "model_api_key": SecretStr(STAND_IN_API_KEY),
    }


@dataclass
class DemoShop:
    tenant: Tenant
    project: Project
    requester: User
    approver: User
    account_id: uuid.UUID


async def seed_shop(
    sessions: SessionFactory,
    repo_dir: Path,
    *,
    name: str = "Corner Shop",
    human_approval: bool = True,
    funds: int = DEMO_FUNDS,
) -> DemoShop:
    """A tenant with a requester and an approver, its approval policy, a funded token account
    (through the Ledger, so it reconciles) and a project on a fresh sample repository."""
    suffix = uuid.uuid4().hex[:6]
    slug = f"{name.lower().replace(' ', '-')}-{suffix}"
    tenant = Tenant(name=f"{name} ({suffix})", slug=slug, plan_tier=PlanTier.GROWTH)
    requester = User(
        tenant_id=tenant.id,
        email=f"alice@{slug}.example",
        display_name="Alice (shop manager)",
        role=UserRole.CLIENT_OPERATOR,
    )
    approver = User(
        tenant_id=tenant.id,
        email=f"bob@{slug}.example",
        display_name="Bob (owner)",
        role=UserRole.CLIENT_ADMIN,
    )
    policy = ApprovalPolicy(
        tenant_id=tenant.id,
        approver_roles=[UserRole.CLIENT_ADMIN.value],
        approvals_required={"low": 1, "medium": 1, "high": 2, "critical": 2},
        # Human runs: nothing is approved by the system. Otherwise everything is.
        auto_approve_max_risk=None if human_approval else RiskLevel.CRITICAL,
    )
    repo = await asyncio.to_thread(create_sample_repo, repo_dir / f"storefront-{suffix}")
    project = Project(
        tenant_id=tenant.id,
        name="Storefront",
        slug=f"storefront-{suffix}",
        repo_url=str(repo),
        default_branch="main",
        check_command=SAMPLE_CHECK_COMMAND,
    )
    async with sessions() as session:
        session.add(tenant)
        await session.flush()
        session.add_all([requester, approver, policy, project])
        await session.commit()
    ledger = Ledger(sessions)
    account = await ledger.open_account(tenant.id)
    await ledger.top_up(account.id, funds, key=f"demo-funding:{tenant.id}", description="demo")
    return DemoShop(tenant, project, requester, approver, account.id)


class Progress:
    """Prints a line whenever the lifecycle's visible state changes."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seen: set[str] = set()

    def say(self, text: str) -> None:
        if text in self.seen:
            return
        self.seen.add(text)
        print(f"   [{time.monotonic() - self.started:6.2f}s] {text}", flush=True)

    def show(self, status: PromptRequestStatus) -> None:
        step = f" - {status.step}" if status.step and status.step != status.status.value else ""
        self.say(f"{status.status.value}{step}")
        # A restoring deployment is reported as its failed one's rollback, not on its own.
        rollbacks = {d.rollback_deployment_id for d in status.deployments}
        for d in status.deployments:
            if d.deployment_id in rollbacks:
                continue
            position = f" (queue position {d.queue_position})" if d.queue_position else ""
            self.say(f"{d.environment.value} deployment: {d.status.value}{position}")
            if d.rollback_deployment_id is not None and d.rollback_status is not None:
                self.say(f"{d.environment.value} rollback: {d.rollback_status.value}")


async def run_lifecycle(
    lifecycle: LifecycleClient,
    shop: DemoShop,
    prompt: str,
    *,
    on_status: Callable[[PromptRequestStatus], None] | None = None,
    approve: bool = True,
    say: Callable[[str], None] = print,
) -> PromptRequestResult:
    """Submit `prompt`, approve its plan as the shop's approver when asked, wait for the end."""
    request_id = await lifecycle.submit(
        tenant_id=shop.tenant.id,
        project_id=shop.project.id,
        user_id=shop.requester.id,
        prompt=prompt,
    )
    approved: set[str] = set()
    async with asyncio.timeout(LIFECYCLE_TIMEOUT_S):
        outcome = asyncio.create_task(lifecycle.wait_for_outcome(request_id))
        while not outcome.done():
            try:
                status = await lifecycle.status(request_id)
            except Exception:  # the workflow's first task has not run yet
                await asyncio.sleep(0.1)
                continue
            if on_status:
                on_status(status)
            plan = status.plan
            if (
                approve
                and plan is not None
                and status.status is PromptStatus.AWAITING_APPROVAL
                and plan.content_hash not in approved
            ):
                say(
                    f"plan r{plan.revision}: risk {plan.risk_level.value} "
                    f"({'; '.join(plan.risk_reasons)}), estimate {plan.token_estimate} tokens"
                )
                for line in plan.diff_summary.splitlines():
                    say(f"  {line}")
                say(f"{shop.approver.display_name} approves plan {plan.content_hash[:12]}")
                approved.add(plan.content_hash)
                await lifecycle.approve(
                    request_id, user_id=shop.approver.id, content_hash=plan.content_hash
                )
                continue
            if is_terminal(status.status):
                break
            await asyncio.sleep(0.2)
        return await outcome


# Printed last when the demo stops its stack: `make dev` reopens the same data folder.
LINKS_AGAIN = "The Web UI links above work again, with the same data, after: make dev"


def keeps_running(
    argv: Sequence[str],
    env: Mapping[str, str],
    stdin: TextIO | None = sys.stdin,
    stdout: TextIO | None = sys.stdout,
) -> bool:
    """Keep the stack up for someone clicking the links: a person at a terminal, not CI."""
    if "--exit" in argv:
        return False
    if "--keep-running" in argv:
        return True
    at_terminal = all(stream is not None and stream.isatty() for stream in (stdin, stdout))
    return at_terminal and not env.get("CI")


async def demo(settings: Settings) -> int:
    keep_running = keeps_running(sys.argv[1:], os.environ)
    stand_in = model_stand_in()
    async with embedded_stack(settings) as stack:
        settings = stack.settings.model_copy(
            update=stand_in_model_settings(stand_in) | demo_credential_keys(stack.settings)
        )
        client: Client = await connect(settings)
        engine = create_engine(stack.database_url, pool_size=settings.db_pool_size)
        sessions = session_factory(engine)
        stop = asyncio.Event()
        stop_on_signals(stop)
        deps = Dependencies(settings=settings, sessions=sessions, client=client)
        serving = asyncio.create_task(run_until_stopped(build_workers(client, deps), stop))
        try:
            code = await show(settings, client, sessions)
            if keep_running and code == 0:
                print(
                    "\nThe stack and the worker keep running, so the links stay live; "
                    "try `.venv/bin/changeflow tenant list` in another shell. Ctrl-C stops them.",
                    flush=True,
                )
                await stop.wait()
        finally:
            stop.set()
            await serving
            await engine.dispose()
            stand_in.stop()
    if "temporal" in stack.started:
        print(f"\n{LINKS_AGAIN}", flush=True)
    return code


async def show(settings: Settings, client: Client, sessions: SessionFactory) -> int:
    lifecycle = LifecycleClient(
        client,
        task_queue=settings.task_queue,
        deploy_task_queue=settings.deploy_task_queue,
        # The approver's decisions are signed by the development signer its workers trust.
        signer=development_signer(settings),
    )
    shop = await seed_shop(sessions, settings.data_dir.resolve() / "demo")
    ledger = Ledger(sessions)
    before = await ledger.balance(shop.account_id)
    print(
        f"\nchangeflow demo - tenant {shop.tenant.name}\n"
        f"   requester {shop.requester.display_name}, approver {shop.approver.display_name}\n"
        f"   project repository {shop.project.repo_url}\n"
        f"   check command: {shop.project.check_command}\n"
        f"   token balance {before.balance:,}\n",
        flush=True,
    )
    runs = [
        ("a safe change, approved by a person", SAFE_PROMPT, PromptStatus.COMPLETED),
        (
            "a change that passes staging and fails production",
            FAILS_IN_PRODUCTION_PROMPT,
            None,
        ),
    ]
    results: list[PromptRequestResult] = []
    for number, (title, prompt, _) in enumerate(runs, start=1):
        print(f"{number}) {title}: {prompt!r}", flush=True)
        progress = Progress()
        result = await run_lifecycle(
            lifecycle, shop, prompt, on_status=progress.show, say=progress.say
        )
        results.append(result)
        progress.say(
            f"finished {result.status.value}"
            + (f": {result.reason}" if result.reason else "")
            + f"; {result.tokens_used} tokens used, {result.tokens_settled} charged"
        )
        request_link = settings.workflow_url(prompt_request_workflow_id(result.prompt_request_id))
        print(f"   Web UI: {request_link}")
        # An automatic rollback is listed too; it is printed with the deployment it undid.
        rollbacks = {d.rollback_deployment_id for d in result.deployments}
        for d in result.deployments:
            if d.deployment_id in rollbacks:
                continue
            link = settings.workflow_url(deployment_workflow_id(d.deployment_id))
            print(f"     {d.environment.value}: {link}")
            if d.rollback_deployment_id:
                rollback_id = deployment_workflow_id(d.rollback_deployment_id)
                print(f"     {d.environment.value} rollback: {settings.workflow_url(rollback_id)}")
            if d.log_url:
                print(f"       verification log {d.log_url}")
        print(flush=True)
    model_result = await run_model_change(settings, lifecycle, sessions, shop)
    commerce = await run_commerce(settings, client, sessions, shop.tenant.id)
    github = await run_github(settings, client, sessions, shop.tenant.id, run_on(lifecycle, shop))
    after = await ledger.balance(shop.account_id)
    print(
        f"Token balance: {before.balance:,} before, {after.balance:,} after "
        f"({before.balance - after.balance:,} charged, {after.held:,} still held)"
    )
    tenant_query = f'TenantId="{shop.tenant.id}"'
    print(f"Everything of this tenant in the Web UI: {settings.workflows_url(tenant_query)}")
    first, second = results
    rolled_back = any(
        d.environment.value == "production" and d.rollback_deployment_id for d in second.deployments
    )
    ok = (
        first.status is PromptStatus.COMPLETED
        and rolled_back
        and model_result.status is PromptStatus.COMPLETED
        and commerce.ok
        and github.ok
    )
    if not ok:
        print(
            "demo: unexpected outcome - the first and third lifecycles should complete, the "
            "second should be rolled back in production, the incremental sync should bring "
            "exactly the shop's change (1 new order, 2 changed), and the GitHub change should be "
            "merged with green deployments",
            file=sys.stderr,
        )
    sys.stdout.flush()
    return 0 if ok else 1


def run_on(lifecycle: LifecycleClient, shop: DemoShop) -> RunRequest:
    """A request on another project of the demo tenant, run and shown like the others."""

    async def run(project: Project, prompt: str) -> PromptRequestResult:
        progress = Progress()
        result = await run_lifecycle(
            lifecycle,
            replace(shop, project=project),
            prompt,
            on_status=progress.show,
            say=progress.say,
        )
        progress.say(
            f"finished {result.status.value}" + (f": {result.reason}" if result.reason else "")
        )
        return result

    return run


async def run_model_change(
    settings: Settings, lifecycle: LifecycleClient, sessions: SessionFactory, shop: DemoShop
) -> PromptRequestResult:
    """The project switches to the model engine; the endpoint is the local stand-in."""
    async with sessions() as session:
        project = await session.get(Project, shop.project.id)
        assert project is not None
        project.change_engine = ChangeEngineKind.MODEL
        await session.commit()
    print(
        f"3) a free-text change by the model engine: {MODEL_PROMPT!r}\n"
        f"   endpoint {settings.model_base_url}: a LOCAL STAND-IN of an OpenAI-compatible "
        "server with scripted answers, not a model",
        flush=True,
    )
    progress = Progress()
    result = await run_lifecycle(
        lifecycle, shop, MODEL_PROMPT, on_status=progress.show, say=progress.say
    )
    async with sessions() as session:
        calls = list(
            (
                await session.exec(
                    select(ModelCall)
                    .where(ModelCall.prompt_request_id == result.prompt_request_id)
                    .order_by(col(ModelCall.revision), col(ModelCall.call_number))
                )
            ).all()
        )
    for call in calls:
        progress.say(
            f"model call {call.call_number} ({call.outcome.value}, max_tokens {call.max_tokens}): "
            f"{call.prompt_tokens} prompt + {call.completion_tokens} completion tokens reported"
        )
    answered = [c for c in calls if c.outcome is ModelCallOutcome.ANSWERED]
    if answered:
        print("   the edits it answered:")
        for line in answered[-1].answer.splitlines():
            print(f"     | {line}")
    progress.say(
        f"finished {result.status.value}"
        + (f": {result.reason}" if result.reason else "")
        + f"; {sum(c.tokens_charged for c in calls)} tokens reported, "
        f"{result.tokens_settled} charged"
    )
    link = settings.workflow_url(prompt_request_workflow_id(result.prompt_request_id))
    print(f"   Web UI: {link}\n", flush=True)
    return result


def main() -> None:
    # The demo's own lines are the point; the worker's logs stay quiet unless asked for.
    os.environ.setdefault("CHANGEFLOW_LOG_LEVEL", "WARNING")
    # pgserver asks platformdirs for a runtime folder; its fallback is fine and not news.
    run_entry_point(demo, prog="demo")


if __name__ == "__main__":
    main()
