import uuid

from temporalio import workflow
from temporalio.worker import Worker

from workflows.contracts.search_attributes import TENANT_ID


@workflow.defn(sandboxed=False)
class _Echo:
    @workflow.run
    async def run(self, value: str) -> str:
        workflow.upsert_search_attributes([TENANT_ID.value_set(value)])
        return value


async def test_dev_server_runs_a_workflow_with_our_search_attributes(client, task_queue):
    async with Worker(client, task_queue=task_queue, workflows=[_Echo]):
        handle = await client.start_workflow(
            _Echo.run, "acme", id=f"echo-{uuid.uuid4()}", task_queue=task_queue
        )
        assert await handle.result() == "acme"
        described = await handle.describe()
    assert described.typed_search_attributes.get(TENANT_ID) == "acme"
