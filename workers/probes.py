"""Is a server there: the checks a process makes before it relies on one, cheap enough for the
`changeflow` command to make on every call (asyncpg and a socket)."""

import socket

import asyncpg

from infra.settings import ConfigurationError
from models.db import asyncpg_dsn


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


async def check_database(url: str, connect_timeout_s: float = 10) -> None:
    """Fail fast, with one clear message, when the database cannot be reached."""
    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=connect_timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        safe = url.split("@")[-1] if "@" in url else url
        raise ConfigurationError(f"cannot reach PostgreSQL at {safe}: {exc}") from None
    await conn.close()
