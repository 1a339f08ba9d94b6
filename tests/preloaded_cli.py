"""`changeflow` with its imports done once per test session.

A command spends seconds importing before it does anything; tests run it a hundred times. This
process imports the command's modules once, then forks a child for every command a test runs
(tests/cli_support.py: `changeflow`). The child is still the command as a person runs it: a
process of its own, with the test's environment, working folder, stdout, stderr and exit code,
entering at the `changeflow` console script. Only the import is shared: nothing the command
does before its entry point (no settings, no connection, no event loop) runs here.

Protocol, over a Unix socket: a request is one JSON line {"args", "env", "cwd", "stdout",
"stderr"} (the two outputs are files the child writes); the answers are {"pid"} at the fork,
then {"code"} when the child has ended.

Run as `python -m tests.preloaded_cli SOCKET_PATH`; it prints "ready" once it listens.
"""

import importlib
import json
import os
import pkgutil
import socket
import sys
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any


def preload() -> Callable[[], Any]:
    """Every module of the command (those a command group imports lazily too); its entry."""
    import cli

    for module in pkgutil.walk_packages(cli.__path__, "cli."):
        if module.name != "cli.__main__":
            importlib.import_module(module.name)
    (entry,) = (e for e in entry_points(group="console_scripts") if e.name == "changeflow")
    main: Callable[[], Any] = entry.load()
    return main


def run_command(main: Callable[[], Any], request: dict[str, Any]) -> None:
    """In the forked child: become the command's process, then enter it (it exits itself)."""
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        sys.argv = ["changeflow", *request["args"]]
        main()
    finally:
        os._exit(70)  # only when the entry point returned or raised instead of exiting


def serve(connection: socket.socket, main: Callable[[], Any]) -> None:
    with connection, connection.makefile("rwb") as stream:
        request = json.loads(stream.readline())
        pid = os.fork()
        if pid == 0:
            run_command(main, request)
        stream.write(json.dumps({"pid": pid}).encode() + b"\n")
        stream.flush()
        _, status = os.waitpid(pid, 0)
        stream.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
        stream.flush()


def main() -> None:
    entry = preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sys.argv[1])
    listener.listen(16)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection, entry), daemon=True).start()


if __name__ == "__main__":
    main()
