"""The embedded stack from pip wheels: pgserver PostgreSQL and the Temporal dev server. Both are
reused when already running rather than failing on a taken socket or port.

Marked `embedded`: always runs against pgserver, even when TEST_DATABASE_URL points elsewhere.
"""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import select
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

from client.connection import connect
from infra.settings import ConfigurationError, Settings
from models import Tenant
from models.db import create_engine, session_factory
from models.migrate import upgrade
from tests.process_support import free_port
from workers.devstack import (
    check_database,
    port_open,
    register_search_attributes,
    start_postgres,
    start_temporal,
    stop_process,
)
from workflows.contracts.search_attributes import ALL as SEARCH_ATTRIBUTES

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parent.parent

# Another process joining the same data folder, as a second `make dev` or `make demo` would.
JOIN_FROM_ANOTHER_PROCESS = """
import json, sys
from pathlib import Path
from workers.devstack import start_postgres
server, url = start_postgres(Path(sys.argv[1]))
print(json.dumps({"pid": server.get_pid(), "url": url}))
server.cleanup()
"""


async def test_pgserver_starts_migrates_stores_rows_and_is_reused_by_a_second_start(tmp_path):
    server, url = await asyncio.to_thread(start_postgres, tmp_path)
    try:
        assert "host=" in url, "pgserver listens on a Unix socket in its data folder"
        await asyncio.to_thread(upgrade, url)
        engine = create_engine(url, pool_size=1)
        sessions = session_factory(engine)
        tenant = Tenant(name="Embedded Shop", slug="embedded-shop")
        async with sessions() as session:
            session.add(tenant)
            await session.commit()
        async with sessions() as session:
            stored = (await session.exec(select(Tenant).where(Tenant.id == tenant.id))).one()
        assert stored.slug == "embedded-shop"
        await engine.dispose()

        joined = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", JOIN_FROM_ANOTHER_PROCESS, str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        other = json.loads(joined.stdout.strip().splitlines()[-1])
        assert other == {"pid": server.get_pid(), "url": url}
        # The other process let go of its handle; the server we hold keeps running.
        await check_database(url)
    finally:
        await asyncio.to_thread(server.cleanup)

    with pytest.raises(ConfigurationError, match="cannot reach PostgreSQL"):
        await check_database(url, connect_timeout_s=3)


async def test_the_dev_server_starts_is_reused_registers_search_attributes_and_stops(tmp_path):
    settings = Settings(data_dir=tmp_path, dev_temporal_port=free_port(), dev_ui_port=free_port())
    process, address = await asyncio.to_thread(start_temporal, settings)
    try:
        assert process is not None
        assert address == f"127.0.0.1:{settings.dev_temporal_port}"
        assert (tmp_path / "temporal.db").exists(), "state is kept in the data folder"

        again, same_address = await asyncio.to_thread(start_temporal, settings)
        assert again is None, "a second start joins the running server"
        assert same_address == address

        client = await connect(settings, address=address)
        await register_search_attributes(client, settings.temporal_namespace)
        # Registering again is harmless (a restarted stack does it every time).
        await register_search_attributes(client, settings.temporal_namespace)
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=settings.temporal_namespace)
        )
        assert {key.name for key in SEARCH_ATTRIBUTES} <= set(listed.custom_attributes)
        assert port_open("127.0.0.1", settings.dev_ui_port), "the Web UI is on"
    finally:
        await asyncio.to_thread(stop_process, process)

    assert process.poll() is not None
    assert not port_open("127.0.0.1", settings.dev_temporal_port)
