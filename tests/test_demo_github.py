"""`make demo`'s GitHub part as a newcomer sees it: a request on a project whose repository is
on the GitHub stand-in becomes a pull request, goes green, is merged, and the demo says where
(and that it is a stand-in)."""

from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlmodel import select
from temporalio.client import Client

from client.lifecycle import LifecycleClient
from models.db import SessionFactory
from models.lifecycle import PromptStatus
from models.projects import Connector, ConnectorStatus
from scripts.demo import run_on, seed_shop
from scripts.demo_github import run_github
from tests.commerce_support import key_spec
from tests.workers import running_workers, test_settings


@pytest.mark.asyncio(loop_scope="session")
async def test_the_demo_ships_a_change_as_a_pull_request_merged_on_the_github_stand_in(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    deploy_queue: str,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = test_settings(
        task_queue=task_queue, deploy_task_queue=deploy_queue, workspace_dir=tmp_path / "ws"
    ).model_copy(
        update={
            "credential_keys": SecretStr(key_spec("k1")),
            "credential_key_id": "k1",
            "data_dir": tmp_path,
            "repository_cache_dir": tmp_path / "cache",
        }
    )
    shop = await seed_shop(sessions, tmp_path / "demo")
    async with running_workers(client, sessions, settings):
        outcome = await run_github(
            settings, client, sessions, shop.tenant.id, run_on(lifecycle, shop)
        )
    out = capsys.readouterr().out

    assert outcome.ok, out
    assert outcome.result.status is PromptStatus.COMPLETED
    assert outcome.deployments == [("staging", "success"), ("production", "success")]
    assert "LOCAL STAND-IN of GitHub" in out
    assert f"pull request #1 on the GitHub stand-in: {outcome.pull_url} (merged by" in out
    assert outcome.pull_url.endswith("/pull/1")
    assert "its checks: build success, lint success" in out
    assert "Bob (owner) approves plan" in out  # the demo's approver decided, as in its others
    # The stand-in is gone with the demo: its connector is disabled.
    async with sessions() as session:
        rows = await session.exec(select(Connector).where(Connector.tenant_id == shop.tenant.id))
        [connector] = rows.all()
    assert connector.status is ConnectorStatus.DISABLED
