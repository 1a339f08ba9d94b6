"""The demo's seeding and the lifecycle benchmark (its baselines, its sizes, a quick run), on the
real servers."""

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from sqlmodel import select
from temporalio.client import Client
from temporalio.worker import Worker

from activities.ledger import Ledger
from models import ApprovalPolicy, Project, RiskLevel, UserRole
from models.db import SessionFactory
from scripts.bench_bare import BareChildWorkflow, BareShape, BareWorkflow, bare_step
from scripts.bench_drain import server_log_limit_errors
from scripts.bench_lifecycle import (
    DEFAULT_SIZES,
    ENVIRONMENT,
    QUICK_SIZES,
    Shape,
    activity_breakdown,
    lifecycle_shape,
    parse_sizes,
    percentile,
)
from scripts.bench_minimal import (
    MINIMAL_ACTIVITIES,
    MINIMAL_ACTIVITY_FUNCTIONS,
    MinimalDeploymentWorkflow,
    MinimalLifecycleWorkflow,
)
from scripts.demo import seed_shop

ROOT = Path(__file__).resolve().parents[1]


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
            BareShape(
                run_id="t",
                activities=3,
                children=2,
                child_activities=4,
                local_activities=1,
                child_local_activities=2,
            ),
            id=workflow_id,
            task_queue=task_queue,
        )
        assert done == 1 + 3 + 2 * (2 + 4)
        # The benchmark reads a lifecycle's shape from histories the same way.
        shape = await lifecycle_shape(client, workflow_id)
        assert shape == Shape(3, 2, 4, 1, 2) and shape.total_activities == 16
        breakdown = await activity_breakdown(client, [workflow_id])
        assert breakdown["bench_bare_step"].count == 11


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 95) == 19.0
    assert percentile(values, 50) == 10.0
    assert percentile([3.0], 95) == 3.0


async def test_the_minimal_baseline_is_four_activities_around_two_children_of_two(
    client: Client, task_queue: str
) -> None:
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[MinimalLifecycleWorkflow, MinimalDeploymentWorkflow],
        activities=MINIMAL_ACTIVITY_FUNCTIONS,
    ):
        workflow_id = f"bench-minimal-{uuid.uuid4()}"
        done = await client.execute_workflow(
            MinimalLifecycleWorkflow.run, "t", id=workflow_id, task_queue=task_queue
        )
        assert done == MINIMAL_ACTIVITIES == 8
        assert await lifecycle_shape(client, workflow_id) == Shape(4, 2, 2)


def test_bench_sizes_come_from_options_then_environment_then_quick_or_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    assert parse_sizes([]) == DEFAULT_SIZES
    assert parse_sizes(["--quick"]) == QUICK_SIZES
    monkeypatch.setenv("BENCH_PARKED", "40")
    sizes = parse_sizes(["--quick", "--drain", "7"])
    assert (sizes.parked, sizes.drain, sizes.n) == (40, 7, QUICK_SIZES.n)
    with pytest.raises(SystemExit, match="cannot exceed --parked"):
        parse_sizes(["--parked", "2", "--drain", "3"])
    with pytest.raises(SystemExit, match="at least 1"):
        parse_sizes(["--n", "0"])
    monkeypatch.setenv("BENCH_N", "many")
    with pytest.raises(SystemExit, match="BENCH_N must be a number"):
        parse_sizes([])


@pytest.mark.system
async def test_a_quick_bench_run_prints_every_figure_as_its_last_line(
    namespace_client: Client, database_url: str, tmp_path: Path
) -> None:
    """The whole benchmark, tiny, against the session's servers: the worker runs as
    `python -m workers`, the drain completes, the histories are counted."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHANGEFLOW_", "TEMPORAL_", "DATABASE_URL", "BENCH_"))
    }
    env.update(
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=namespace_client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=namespace_client.namespace,
        CHANGEFLOW_TASK_QUEUE=queue,
        CHANGEFLOW_DEPLOY_TASK_QUEUE=f"{queue}-deploy",
        CHANGEFLOW_DATA_DIR=str(tmp_path / "data"),
        CHANGEFLOW_GRACEFUL_SHUTDOWN_SECONDS="1",
        PYTHONPATH=str(ROOT),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.bench_lifecycle",
        "--quick",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 600)
    text = out.decode()
    assert process.returncode == 0, text
    figures = json.loads(text.strip().splitlines()[-1])

    assert figures["activities_per_lifecycle"] > figures["minimal_activities_per_lifecycle"] == 8
    for key in ("lifecycle_vs_bare_ratio", "lifecycle_vs_minimal_ratio", "queued_drain_per_s"):
        assert figures[key] > 0
    # The model engine's lifecycles ran against the stand-in: one call each, real usage charged.
    assert figures["model_vs_rule_ratio"] > 0
    assert figures["model_calls_per_lifecycle"] == 1
    assert figures["model_tokens_charged_per_lifecycle"] > 0
    assert (figures["parked"], figures["parked_projects"]) == (QUICK_SIZES.parked, 2)
    assert figures["drain_completed"] == figures["drain"] == QUICK_SIZES.drain
    assert figures["drain_timed_out"] is False
    for key in ("rss_before_mb", "parked_worker_rss_mb", "rss_after_close_mb"):
        assert figures[key] > 50  # a Python worker with the SDK loaded
    # Each drained lifecycle: its prompt workflow and two deployments, at least a task each.
    assert figures["drain_workflows"] >= 3 * QUICK_SIZES.drain
    assert figures["workflow_tasks_per_lifecycle"] >= 3
    assert figures["approve_p50_s"] > 0
    assert figures["approval_to_staging_start_p50_s"] > 0
    # A configured server's log is not the benchmark's to read; nothing was refused.
    assert figures["server_log_limit_errors"] is None
    assert figures["server_limit_errors"] == 0
    assert figures["dev_server_persistence"].startswith("configured Temporal server")
    # Lifecycles on a git remote over smart HTTP, and plans of a bigger remote repository.
    assert figures["remote_vs_local_ratio"] > 0
    assert figures["big_repo_plan_warm_s"] > 0 and figures["big_repo_files"] == 500


def test_the_server_log_counts_each_limit_refusal_once_from_the_offset(tmp_path: Path) -> None:
    log = tmp_path / "temporal.log"
    before = 'level=ERROR msg="service failures" grpc_code=ResourceExhausted error="old"\n'
    refusal = (
        'level=ERROR msg="service failures" operation=ExecuteMultiOperation '
        'grpc_code=ResourceExhausted error="MultiOperation could not be executed: Update '
        'failed: limit on number of concurrent in-flight updates has been reached (10)"\n'
        'level=ERROR msg="service failures" operation=ExecuteMultiOperation '
        'grpc_code=ResourceExhausted error="Update-with-Start could not be executed."\n'
    )
    unrelated = 'level=WARN msg="Failed to poll for task." service=worker\n'
    log.write_text(before + refusal * 3 + unrelated)
    assert server_log_limit_errors(log, len(before)) == 3
    assert server_log_limit_errors(log, 0) == 4
    assert server_log_limit_errors(None, 0) is None
    assert server_log_limit_errors(tmp_path / "missing.log", 0) is None
