"""With CHANGEFLOW_METRICS_PORT set, the Temporal runtime serves Prometheus metrics there."""

import asyncio
import urllib.request
import uuid

from temporalio import workflow
from temporalio.worker import Worker

from client.connection import connect
from infra.settings import Settings
from tests.process_support import free_port


@workflow.defn(name="TestMetricsWorkflow", sandboxed=False)
class Hello:
    @workflow.run
    async def run(self, name: str) -> str:
        return f"hello {name}"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


async def test_the_runtime_exposes_prometheus_metrics_of_the_work_done(temporal_env, task_queue):
    port = free_port()
    settings = Settings(
        temporal_address=temporal_env.client.service_client.config.target_host,
        metrics_port=port,
    )
    client = await connect(settings)

    async with Worker(client, task_queue=task_queue, workflows=[Hello]):
        result = await client.execute_workflow(
            Hello.run, "metrics", id=f"metrics-{uuid.uuid4()}", task_queue=task_queue
        )
        assert result == "hello metrics"
        exposed = await asyncio.to_thread(scrape, port)

    completed = [
        line
        for line in exposed.splitlines()
        if line.startswith("temporal_workflow_completed") and f'task_queue="{task_queue}"' in line
    ]
    assert completed, exposed[:2000]
    assert float(completed[0].rsplit(" ", 1)[1]) >= 1
    assert "temporal_request" in exposed
