"""The README's operations recipes, run as written: the cluster recipe's `temporal operator`
commands set up a fresh namespace on which a lifecycle and a connector sync run, and the
typed-client example drives a lifecycle against the workers."""

import asyncio
import os
import re
import shlex
import sys
import time
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.service import RPCError

from client.lifecycle import LifecycleClient
from infra.decision_signer import DevelopmentSigner
from infra.settings import DecisionTokenMode
from models import PromptRequest, PromptStatus
from models.db import SessionFactory
from scripts.shopify_stand_in import ShopifyStandIn
from tests.cli_support import command_env, ok
from tests.commerce_support import commerce_settings, connect_shop, orders_of
from tests.conftest import DATA_CONVERTER
from tests.lifecycle_support import human_policy, make_shop, plan_awaiting_approval, submit
from tests.workers import running_workers
from workers.devstack import binary
from workflows.contracts.search_attributes import ALL as SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
RECIPE_NAMESPACE = "changeflow"  # the namespace the recipe names
ONE_APPROVAL = {"low": 1, "medium": 1, "high": 1, "critical": 1}


def section(title: str) -> str:
    """A README section's text, up to the next heading of any level."""
    start = README.index(f"\n{title}\n")
    following = re.search(r"\n#{2,3} ", README[start + len(title) + 2 :])
    end = start + len(title) + 2 + following.start() if following else len(README)
    return README[start:end]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def shell_commands(block: str) -> list[list[str]]:
    """The block's commands, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def recipe_operator_commands() -> list[list[str]]:
    [recipe, *_] = code_blocks(
        section("## Running against a real Temporal cluster and PostgreSQL"), "sh"
    )
    return [c for c in shell_commands(recipe) if c[:2] == ["temporal", "operator"]]


def test_the_cluster_recipe_and_the_compose_section_name_every_search_attribute_the_code_has():
    created = [c for c in recipe_operator_commands() if c[2:4] == ["search-attribute", "create"]]
    # One command per attribute: the CLI takes one --type per --name.
    assert all(c.count("--name") == 1 for c in created)
    named = [c[c.index("--name") + 1] for c in created]
    assert sorted(named) == sorted(key.name for key in SEARCH_ATTRIBUTES)
    assert all(c[c.index("--type") + 1] == "Keyword" for c in created)
    compose = section("### Docker Compose")
    assert all(f"`{key.name}`" in compose for key in SEARCH_ATTRIBUTES)


async def run_temporal_until_accepted(command: list[str], address: str, namespace: str) -> str:
    """The command as written for the recipe's namespace, run for `namespace`; a namespace
    created a moment ago refuses for a few seconds, as the README says: run it again."""
    args = [namespace if arg == RECIPE_NAMESPACE else arg for arg in command[1:]]
    env = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": namespace}
    deadline = time.monotonic() + 60
    while True:
        process = await asyncio.create_subprocess_exec(
            binary("temporal"),
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        if process.returncode == 0:
            return out.decode()
        assert time.monotonic() < deadline, f"{shlex.join(command)}: {err.decode()}"
        await asyncio.sleep(1)


async def test_a_namespace_set_up_as_the_readme_says_runs_a_lifecycle_and_a_connector_sync(
    client: Client, sessions: SessionFactory, database_url: str, task_queue: str, tmp_path: Path
) -> None:
    address = client.service_client.config.target_host
    namespace = f"readme-{uuid.uuid4().hex[:8]}"
    for command in recipe_operator_commands():
        await run_temporal_until_accepted(command, address, namespace)
    on_namespace = await Client.connect(address, namespace=namespace, data_converter=DATA_CONVERTER)
    deadline = time.monotonic() + 30
    while True:  # the new namespace reaches every service of the server in a moment
        try:
            await on_namespace.list_workflows().fetch_next_page()
            break
        except RPCError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)

    settings = commerce_settings(task_queue, tmp_path)
    deploy_queue = f"{task_queue}-deploy"
    shop = await make_shop(sessions, tmp_path, policy=human_policy(approvals_required=ONE_APPROVAL))
    stand_in = ShopifyStandIn(token="shpat_readme")
    stand_in.start()
    stand_in.seed(orders=7, customers=2)
    try:
        async with running_workers(
            on_namespace, sessions, settings, deploy_task_queue=deploy_queue
        ):
            lifecycle = LifecycleClient(
                on_namespace, task_queue=task_queue, deploy_task_queue=deploy_queue
            )
            request_id = await submit(lifecycle, shop, "set theme to dark")
            _, plan = await plan_awaiting_approval(lifecycle, request_id)
            await lifecycle.approve(
                request_id, user_id=shop.admins[0].id, content_hash=plan.content_hash
            )
            async with asyncio.timeout(120):
                result = await lifecycle.wait_for_outcome(request_id)

            connected = await connect_shop(
                sessions, settings, on_namespace, stand_in, token="shpat_readme", tenant=shop.tenant
            )
            env = command_env(
                on_namespace, database_url, task_queue, deploy_queue, tmp_path / "cli"
            )
            assert settings.credential_keys is not None
            env["CHANGEFLOW_CREDENTIAL_KEYS"] = settings.credential_keys.get_secret_value()
            synced = await ok(env, "connector", "sync", str(connected.connector.id), "--json")
    finally:
        stand_in.stop()

    assert result.status is PromptStatus.COMPLETED
    assert synced.json["status"] == "succeeded"
    assert len(await orders_of(sessions, shop.tenant.id)) == 7


async def test_the_typed_client_example_runs_as_written_against_the_workers(
    client: Client, sessions: SessionFactory, database_url: str, task_queue: str, tmp_path: Path
) -> None:
    [example] = [
        block
        for block in code_blocks(section("## Driving a lifecycle"), "python")
        if "LifecycleClient(" in block
    ]
    script = tmp_path / "service.py"
    script.write_text(example)
    deploy_queue = f"{task_queue}-deploy"
    data_dir = tmp_path / "data"
    settings = commerce_settings(task_queue, tmp_path).model_copy(
        update={"decision_tokens": DecisionTokenMode.REQUIRED, "data_dir": data_dir}
    )
    # The workers trust the development signer's keys, which the example signs with.
    DevelopmentSigner.for_data_dir(
        data_dir, issuer=settings.decision_issuer, audience=settings.decision_audience
    )
    shop = await make_shop(sessions, tmp_path, policy=human_policy(approvals_required=ONE_APPROVAL))
    env = command_env(client, database_url, task_queue, deploy_queue, data_dir)
    env.update(
        CHANGEFLOW_DECISION_TOKENS="required",
        TENANT_ID=str(shop.tenant.id),
        PROJECT_ID=str(shop.project.id),
        REQUESTER_ID=str(shop.requester.id),
        APPROVER_ID=str(shop.admins[0].id),
    )
    async with running_workers(client, sessions, settings, deploy_task_queue=deploy_queue):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 180)

    assert process.returncode == 0, out.decode() + err.decode()
    request_id, _, status = out.decode().strip().splitlines()[-1].partition(": ")
    assert status == "completed"
    async with sessions() as session:
        row = await session.get(PromptRequest, uuid.UUID(request_id))
    assert row is not None and row.status is PromptStatus.COMPLETED
    assert row.tenant_id == shop.tenant.id
