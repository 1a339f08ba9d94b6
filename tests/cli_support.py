"""Running `changeflow` as a person runs it: a process of its own, its exit code, its output."""

import asyncio
import atexit
import fcntl
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client

from tests.process_support import ROOT, clean_environment

COMMAND_TIMEOUT_S = 120


def command_env(
    client: Client, database_url: str, task_queue: str, deploy_queue: str, data_dir: Path
) -> dict[str, str]:
    """The environment a person's shell would give the command: this test's servers and queues,
    nothing of the test process's own CHANGEFLOW_/TEMPORAL_ settings."""
    return clean_environment(
        PYTHONPATH=str(ROOT),
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=client.namespace,
        CHANGEFLOW_TASK_QUEUE=task_queue,
        CHANGEFLOW_DEPLOY_TASK_QUEUE=deploy_queue,
        CHANGEFLOW_DATA_DIR=str(data_dir),
        CHANGEFLOW_LOG_FORMAT="json",
    )


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


async def changeflow(env: dict[str, str], *args: str) -> Ran:
    """The command in a process of its own with `env`, forked from a process that imported the
    command's modules once (tests/preloaded_cli.py): the run is the command's, the seconds of
    importing are saved. `changeflow_process` starts it from nothing."""
    preloaded = await asyncio.to_thread(PreloadedCommand.running)
    with tempfile.TemporaryDirectory(prefix="changeflow-command-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        request = {
            "args": args,
            "env": env,
            "cwd": str(ROOT),
            "stdout": str(out),
            "stderr": str(err),
        }
        reader, writer = await asyncio.open_unix_connection(preloaded.socket_path)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            pid = json.loads(await reader.readline())["pid"]
            try:
                answer = await asyncio.wait_for(reader.readline(), COMMAND_TIMEOUT_S)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                raise
        finally:
            writer.close()
        return Ran(json.loads(answer)["code"], out.read_bytes().decode(), err.read_bytes().decode())


async def changeflow_process(env: dict[str, str], *args: str) -> Ran:
    """The command started from nothing, `python -m cli`, imports and all."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        *args,
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


class PreloadedCommand:
    """tests/preloaded_cli.py for this test process: started at the first command, ended with
    the process."""

    _running: "PreloadedCommand | None" = None
    _starting = threading.Lock()

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="changeflow-preloaded-")
        self.socket_path = str(Path(self.folder) / "cli.sock")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.preloaded_cli", self.socket_path],
            cwd=ROOT,
            env=clean_environment(PYTHONPATH=str(ROOT)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        assert ready == "ready\n", f"tests/preloaded_cli.py did not start: {ready!r}"
        atexit.register(self.stop)

    @classmethod
    def running(cls) -> "PreloadedCommand":
        with cls._starting:
            if cls._running is None or cls._running.process.poll() is not None:
                cls._running = cls()
            return cls._running

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


async def ok(env: dict[str, str], *args: str) -> Ran:
    ran = await changeflow(env, *args)
    assert ran.code == 0, f"changeflow {' '.join(args)} exited {ran.code}: {ran.out}{ran.err}"
    return ran


async def refused(env: dict[str, str], error_type: str, *args: str) -> dict[str, str]:
    """Runs the command twice: for people (stderr names the type) and with --json."""
    human = await changeflow(env, *args)
    assert human.code == 1, human.out + human.err
    assert f"refused: {error_type}: " in human.err
    scripted = await changeflow(env, *args, "--json")
    assert scripted.code == 1
    error: dict[str, str] = scripted.json["error"]
    assert error["type"] == error_type
    assert f"refused: {error_type}: {error['message']}" in human.err
    return error


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def without_colours(text: str) -> str:
    """What a terminal shows of `text`, as plain characters (no escape sequences, no CRs)."""
    return ANSI_ESCAPE.sub("", text).replace("\r\n", "\n")


async def changeflow_on_terminal(
    env: dict[str, str], *args: str, rows: int, columns: int = 120
) -> Ran:
    """Runs the command on a pseudo-terminal of `rows` x `columns`, as in a person's shell:
    stdin, stdout and stderr are the terminal, and `out` is everything it was sent, escape
    sequences included (`err` stays empty)."""
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    shell = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "MANPAGER")}
    shell["TERM"] = "xterm-256color"
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", *args,
            env=shell, cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal,
        )  # fmt: skip
    finally:
        os.close(terminal)
    shown = asyncio.create_task(asyncio.to_thread(_read_until_closed, main))
    try:
        code = await asyncio.wait_for(process.wait(), COMMAND_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        raise
    finally:
        sent = await shown  # the terminal closes once the process (and its pager) ended
        os.close(main)
    return Ran(code, sent.decode(errors="replace"), "")


def _read_until_closed(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every process holding the terminal has ended
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
