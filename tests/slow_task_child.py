"""A worker process whose workflow tasks are slow, for the test of core's slow-task warning.

Core (sdk-core's managed_run.rs) warns "[TMPRL1104] ... Workflow task duration exceeded N
seconds" for each workflow task held open past TEMPORAL_WORKFLOW_TASK_DURATION_WARN_SECONDS
(5 s unless set; read once per process, so this runs as a process of its own with it at 1 s).
Each workflow's local activity sleeps past it, as a local activity waiting for an absent
database does. Logs go to stderr as the worker's do (configure_logging); stdout gets how many
warnings core emitted, counted before our filters.

    python -m tests.slow_task_child <temporal address> <workflows>
"""

import asyncio
import logging
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.worker import Worker

from client.connection import connect
from infra.logging import SLOW_WORKFLOW_TASK, configure_logging
from infra.settings import LogFormat, Settings


@activity.defn
def slow_step() -> None:
    time.sleep(1.5)


@workflow.defn(sandboxed=False)
class SlowTask:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_local_activity(
            slow_step, start_to_close_timeout=timedelta(seconds=10)
        )


class CountSlowTasks(logging.Filter):
    emitted = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if SLOW_WORKFLOW_TASK in record.getMessage():
            CountSlowTasks.emitted += 1
        return True


async def main(address: str, workflows: int) -> None:
    settings = Settings(log_format=LogFormat.JSON)  # type: ignore[call-arg]
    configure_logging(settings, stream=sys.stderr)
    logging.getLogger("temporalio.core").filters.insert(0, CountSlowTasks())
    client = await connect(settings, address=address)
    queue = f"slow-{uuid.uuid4()}"
    with ThreadPoolExecutor(workflows) as pool:
        async with Worker(
            client,
            task_queue=queue,
            workflows=[SlowTask],
            activities=[slow_step],
            activity_executor=pool,
        ):
            await asyncio.gather(
                *(
                    client.execute_workflow(SlowTask.run, id=f"{queue}-{n}", task_queue=queue)
                    for n in range(workflows)
                )
            )
    print(f"EMITTED {CountSlowTasks.emitted}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
