"""`make dev`: the embedded stack (PostgreSQL, the Temporal dev server with its Web UI, and the
codec server it decodes payloads through) and a worker serving every task queue, in this one
process, until Ctrl-C.

Prints the addresses other processes (scripts, a second worker, psql, the temporal CLI) can use.
A second `make dev` joins what is already running instead of failing on taken ports.
"""

import asyncio

from sqlalchemy.engine import make_url

from infra.entry_points import run_entry_point
from infra.settings import Settings
from workers.devstack import EmbeddedStack, embedded_stack
from workers.worker import serve_stack, stop_on_signals


def banner(stack: EmbeddedStack) -> str:
    settings = stack.settings
    url = make_url(stack.database_url)
    # The embedded server has no password; a configured one is the user's secret.
    database_url = url.render_as_string(hide_password=bool(url.password))
    return "\n".join(
        [
            "",
            f"  Temporal Web UI   {settings.ui_url}/namespaces/{settings.temporal_namespace}",
            f"  Codec server      {settings.codec_server_url} (the Web UI decodes through it)",
            "  Use from another shell:",
            f"    export DATABASE_URL='{database_url}'",
            f"    export TEMPORAL_ADDRESS={stack.temporal_address}",
            f"    export TEMPORAL_NAMESPACE={settings.temporal_namespace}",
            f"    export TEMPORAL_CODEC_ENDPOINT={settings.codec_server_url}"
            "   # the temporal CLI decodes",
            f"  Task queues       {settings.task_queue}, {settings.deploy_task_queue}",
            "  Ctrl-C stops the worker and whatever this process started.",
            "",
        ]
    )


async def dev(settings: Settings) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with embedded_stack(settings) as stack:
        print(banner(stack), flush=True)
        await serve_stack(stack, stop)
    return 0


def main() -> None:
    run_entry_point(dev, prog="dev")


if __name__ == "__main__":
    main()
