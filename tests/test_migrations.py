"""Alembic builds the schema on an empty database, removes it again, and agrees with the models.

Runs on a scratch database of its own on the session's server, since it drops everything.
"""

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from sqlmodel import SQLModel

import models
from models.db import asyncpg_dsn
from models.migrate import downgrade, schema_drift, upgrade
from scripts.databases import create_database, drop_database
from tests.process_support import clean_environment

ROOT = Path(__file__).resolve().parent.parent


@pytest_asyncio.fixture
async def empty_database(database_url: str) -> AsyncIterator[str]:
    name = f"changeflow_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(database_url, name)
    yield url
    await drop_database(database_url, name)


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


async def test_upgrade_head_creates_a_table_per_entity_and_downgrade_base_removes_them(
    empty_database,
):
    assert await tables(empty_database) == set()

    # Alembic's env runs its own event loop: keep it off this one.
    await asyncio.to_thread(upgrade, empty_database)

    created = await tables(empty_database)
    entity_tables = {entity.__tablename__ for entity in models.ENTITIES}  # type: ignore[attr-defined]
    assert len(entity_tables) == 13
    assert entity_tables <= created
    assert created == set(SQLModel.metadata.tables) | {"alembic_version"}

    await asyncio.to_thread(downgrade, empty_database)

    assert await tables(empty_database) <= {"alembic_version"}


async def test_the_migrations_and_the_models_agree(empty_database):
    await asyncio.to_thread(upgrade, empty_database)

    assert await schema_drift(empty_database) == []


async def test_upgrading_an_up_to_date_database_changes_nothing(empty_database):
    await asyncio.to_thread(upgrade, empty_database)
    before = await tables(empty_database)

    await asyncio.to_thread(upgrade, empty_database)

    assert await tables(empty_database) == before
    assert await schema_drift(empty_database) == []


@pytest.mark.system
async def test_make_migrate_upgrades_the_configured_database(empty_database):
    env = clean_environment()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers.migrate",
        env={**env, "DATABASE_URL": empty_database},
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()

    assert process.returncode == 0, stderr.decode()
    assert set(SQLModel.metadata.tables) <= await tables(empty_database)
    assert await schema_drift(empty_database) == []
