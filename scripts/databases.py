"""Throwaway databases for the test suite and the benchmarks, on any PostgreSQL server (the
machine's or the embedded one): created beside the product's, dropped with everything in them."""

import asyncpg
from sqlalchemy.engine import make_url

from models.db import asyncpg_dsn
from workers.devstack import ensure_database


async def create_database(admin_url: str, name: str) -> str:
    """Create database `name` on admin_url's server; returns its URL."""
    await ensure_database(admin_url, name)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
