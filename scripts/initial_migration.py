"""Regenerate the initial Alembic revision from the models (while no release has shipped).

Autogenerates against a scratch database on TEST_DATABASE_URL's server, so the revision is
exactly what the models say. Usage: `make initial-migration`.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

from alembic import command

from models.migrate import MIGRATIONS, alembic_config
from scripts.databases import create_database, drop_database
from workers.devstack import asyncio_run_in_thread


def main() -> None:
    admin_url = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"changeflow_autogen_{uuid.uuid4().hex[:8]}"
    url = asyncio_run_in_thread(create_database(admin_url, name))
    try:
        for old in (MIGRATIONS / "versions").glob("0001_*.py"):
            old.unlink()
        command.revision(
            alembic_config(url), message="initial schema", autogenerate=True, rev_id="0001"
        )
    finally:
        asyncio_run_in_thread(drop_database(admin_url, name))
    generated = next((MIGRATIONS / "versions").glob("0001_*.py"))
    subprocess.run([sys.executable, "-m", "ruff", "format", "-q", str(generated)], check=False)
    subprocess.run(
        [sys.executable, "-m", "ruff", "check", "-q", "--fix", str(generated)], check=False
    )
    print(f"wrote {Path(generated).name}")


if __name__ == "__main__":
    main()
