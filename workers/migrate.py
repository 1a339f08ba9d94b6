"""`make migrate`: upgrade the configured database (DATABASE_URL) to the latest schema, or the
embedded one under CHANGEFLOW_DATA_DIR when none is configured."""

import asyncio

import structlog

from infra.entry_points import run_entry_point
from infra.settings import Settings
from models.migrate import upgrade
from workers.devstack import check_database, start_postgres

log = structlog.get_logger(__name__)


async def migrate(settings: Settings) -> int:
    server = None
    if settings.database_url is None:
        # Joins a running embedded server (make dev) or starts one just for this.
        server, url = await asyncio.to_thread(start_postgres, settings.data_dir)
    else:
        url = settings.database_url.get_secret_value()
    try:
        await check_database(url)
        await asyncio.to_thread(upgrade, url)
        log.info("database_migrated", database=url, embedded=server is not None)
    finally:
        if server is not None:
            await asyncio.to_thread(server.cleanup)
    return 0


def main() -> None:
    run_entry_point(migrate, prog="migrate")


if __name__ == "__main__":
    main()
