"""A plain script of another service that used the typed client leaves through run_script:
its exit code is its coroutine's, and what it printed is flushed before os._exit."""

import asyncio
import os
import sys
import textwrap
from pathlib import Path

from temporalio.client import Client

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = textwrap.dedent(
    """
    import sys

    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    from infra.entry_points import run_script
    from client.lifecycle import LifecycleClient


    async def main() -> int:
        client = await Client.connect(sys.argv[1], data_converter=pydantic_data_converter)
        LifecycleClient(client)
        print("connected to", client.namespace)  # buffered: a pipe, not a terminal
        return 3


    run_script(main())
    """
)


async def test_a_script_using_the_typed_client_exits_with_its_code_and_its_output(
    client: Client, tmp_path: Path
) -> None:
    script = tmp_path / "service_script.py"
    script.write_text(SCRIPT)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        client.service_client.config.target_host,
        # This checkout's packages, whichever the interpreter's own install points at.
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 3, err.decode()
    assert out.decode() == "connected to default\n"
    assert b"Fatal Python error" not in err
