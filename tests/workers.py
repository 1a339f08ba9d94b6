"""Workers for tests: both task queues, registered from workers/registry.py and running workflows
in the sandbox workers/worker.py gives them, like production."""

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from infra.settings import Settings
from models.db import SessionFactory
from workers.registry import Dependencies, deploy_activities, lifecycle_activities, workflows
from workers.worker import workflow_runner


def test_settings(*, task_queue: str, deploy_task_queue: str, workspace_dir: Path) -> Settings:
    """Settings for in-process workers; the database and Temporal come from the fixtures."""
    return Settings(
        task_queue=task_queue,
        deploy_task_queue=deploy_task_queue,
        workspace_dir=workspace_dir,
    )


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test despite the name


@contextlib.asynccontextmanager
async def running_workers(
    client: Client,
    sessions: SessionFactory,
    settings: Settings | None = None,
    task_queue: str | None = None,
    deploy_task_queue: str | None = None,
    *,
    replace: Sequence[Callable[..., Any]] = (),
) -> AsyncIterator[Dependencies]:
    """Run Workers for the lifecycle queue and the deploy queue until the block ends.

    Without settings, builds test settings with the workspace in a temporary folder. The queue
    arguments override the settings' queue names. `replace` swaps registered activities for
    ones with the same activity name (e.g. the real activity class built with a gated engine).
    Yields the Dependencies the activities use.
    """
    replacements = {_activity_name(fn): fn for fn in replace}
    with tempfile.TemporaryDirectory(prefix="changeflow-workspace-") as workspace:
        if settings is None:
            settings = test_settings(
                task_queue=task_queue or "changeflow-lifecycle",
                deploy_task_queue=deploy_task_queue or "changeflow-deploy",
                workspace_dir=Path(workspace),
            )
        else:
            overrides: dict[str, object] = {}
            if task_queue:
                overrides["task_queue"] = task_queue
            if deploy_task_queue:
                overrides["deploy_task_queue"] = deploy_task_queue
            if settings.workspace_dir is None:
                overrides["workspace_dir"] = Path(workspace)
            settings = settings.model_copy(update=overrides)
        deps = Dependencies(settings=settings, sessions=sessions, client=client)
        registered = [
            (settings.task_queue, workflows(), lifecycle_activities(deps)),
            (settings.deploy_task_queue, [], deploy_activities(deps)),
        ]
        registered = [
            (queue, flows, [replacements.get(_activity_name(fn), fn) for fn in fns])
            for queue, flows, fns in registered
        ]
        async with contextlib.AsyncExitStack() as stack:
            for queue, queue_workflows, queue_activities in registered:
                # A Worker needs something to run; a queue nobody registered on yet is skipped.
                if queue_workflows or queue_activities:
                    await stack.enter_async_context(
                        Worker(
                            client,
                            task_queue=queue,
                            workflows=queue_workflows,
                            activities=queue_activities,
                            workflow_runner=workflow_runner(),
                        )
                    )
            yield deps


def _activity_name(fn: Callable[..., Any]) -> str:
    definition = activity._Definition.from_callable(fn)
    assert definition is not None and definition.name is not None, f"{fn} is not an activity"
    return definition.name
