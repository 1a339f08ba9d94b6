"""`python -m scripts.bench_sandbox`: what the workflow sandbox costs a Worker's start and a
workflow run, with Temporal's default runner and with the project's (workers/worker.py:
workflow_runner).

Two figures, in one process and without servers (nothing but the sandbox is timed):

- a Worker's start: a Worker runs every workflow class it registers once in a fresh sandbox to
  check it. The default runner does so for every Worker; the project's runner once per class
  per process (the tests make two Workers a test). Timed: ROUNDS Workers' checks of every class
  of workers/registry.py.
- a workflow run: each run imports its workflow module afresh in a sandbox of its own, and
  takes what the module imports from the host when it is passed through. Timed: ROUNDS runs'
  sandboxes of every class, default restrictions against the project's (its passthrough list
  names modules the workflow modules already import through `imports_passed_through`, so the
  two are expected to match: the list keeps a module forgotten there from being imported again).

Rounds alternate the runners so a busy neighbour slows both alike. Prints CPU milliseconds per
Worker and per run, and the ratio of each to the default; the last line is one JSON object.
Tunable: BENCH_ROUNDS (default 20).
"""

import asyncio
import json
import os
import time
from collections.abc import Callable

from temporalio import workflow
from temporalio.worker import WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from workers.registry import workflows
from workers.worker import SANDBOX_RESTRICTIONS, workflow_runner

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))


def cpu_ms_per_round(rounds: int, one_round: Callable[[], None]) -> float:
    started = time.process_time()
    for _ in range(rounds):
        one_round()
    return (time.process_time() - started) * 1000 / rounds


def checks_every_class(make_runner: Callable[[], WorkflowRunner]) -> Callable[[], None]:
    """One Worker's start-up check: a new runner (as each Worker gets), every class prepared."""
    definitions = [workflow._Definition.must_from_class(cls) for cls in workflows()]

    def one_worker() -> None:
        runner = make_runner()
        for definition in definitions:
            runner.prepare_workflow(definition)

    return one_worker


def sandboxes_every_class(runner: SandboxedWorkflowRunner) -> Callable[[], None]:
    """One run of every class: a fresh sandbox importing the workflow's module (what
    prepare_workflow of the plain sandbox runner does, with a stand-in run's info)."""
    definitions = [workflow._Definition.must_from_class(cls) for cls in workflows()]

    def one_run_each() -> None:
        for definition in definitions:
            SandboxedWorkflowRunner.prepare_workflow(runner, definition)

    return one_run_each


async def measure() -> dict[str, float]:
    # create_instance binds the run to the running event loop, as in a Worker.
    cases = {
        "worker start, default runner": checks_every_class(SandboxedWorkflowRunner),
        "worker start, project runner": checks_every_class(workflow_runner),
        "workflow runs, default restrictions": sandboxes_every_class(SandboxedWorkflowRunner()),
        "workflow runs, project restrictions": sandboxes_every_class(
            SandboxedWorkflowRunner(restrictions=SANDBOX_RESTRICTIONS)
        ),
    }
    for one_round in cases.values():  # warm: bytecode read, the process's one check done
        one_round()
    totals = dict.fromkeys(cases, 0.0)
    for _ in range(ROUNDS):
        for name, one_round in cases.items():
            totals[name] += cpu_ms_per_round(1, one_round)
    return {name: total / ROUNDS for name, total in totals.items()}


def main() -> None:
    figures = asyncio.run(measure())
    classes = len(workflows())
    print(f"{ROUNDS} rounds, {classes} workflow classes; CPU per Worker start or per run of each")
    pairs = [
        ("worker start, project runner", "worker start, default runner"),
        ("workflow runs, project restrictions", "workflow runs, default restrictions"),
    ]
    result: dict[str, float] = {}
    for ours, default in pairs:
        ratio = figures[ours] / figures[default]
        print(f"  {default:40} {figures[default]:8.2f} ms")
        print(f"  {ours:40} {figures[ours]:8.2f} ms  ({ratio:.3f} of the default)")
        result[ours] = round(figures[ours], 3)
        result[default] = round(figures[default], 3)
        result[f"{ours} / default"] = round(ratio, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
