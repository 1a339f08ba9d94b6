"""What tests that start processes of their own share: a free port, the environment a person's
shell gives a process, and `python -m workers` as an operator runs it."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from temporalio.client import Client

from scripts.ports import free_port as free_port  # the tests take it from here

ROOT = Path(__file__).resolve().parent.parent
# Settings of the test process itself, which a process started by a test must not inherit.
OWN_SETTINGS = ("CHANGEFLOW_", "TEMPORAL_", "DATABASE_URL")


def clean_environment(**settings: str) -> dict[str, str]:
    """The environment of a person's shell: this machine's, without the test process's own
    CHANGEFLOW_/TEMPORAL_/DATABASE_URL settings, plus `settings`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(OWN_SETTINGS)}
    environment.update(settings)
    return environment


def worker_environment(
    *,
    database_url: str,
    client: Client,
    task_queue: str,
    state_dir: Path,
    deploy_task_queue: str | None = None,
    **settings: str,
) -> dict[str, str]:
    """What a process of the project needs to work against this test's servers and queues;
    its workspaces and data live in `state_dir`."""
    return clean_environment(
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=client.namespace,
        CHANGEFLOW_TASK_QUEUE=task_queue,
        CHANGEFLOW_DEPLOY_TASK_QUEUE=deploy_task_queue or f"{task_queue}-deploy",
        CHANGEFLOW_WORKSPACE_DIR=str(state_dir / "workspace"),
        CHANGEFLOW_DATA_DIR=str(state_dir / "data"),
        CHANGEFLOW_LOG_FORMAT="json",
        **settings,
    )


class WorkerProcess:
    """`python -m workers` as an operator runs it, configured by environment variables; what it
    logs (JSON lines) goes to `log`."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def task_queue(self) -> str:
        return self.env["CHANGEFLOW_TASK_QUEUE"]

    @property
    def deploy_task_queue(self) -> str:
        return self.env["CHANGEFLOW_DEPLOY_TASK_QUEUE"]

    def start(self) -> "WorkerProcess":
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workers"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def events(self) -> list[str]:
        """The `event` of every JSON line logged so far."""
        found = []
        for line in self.lines:
            try:
                found.append(json.loads(line)["event"])
            except (ValueError, KeyError, TypeError):
                continue
        return found

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate_and_wait(self, timeout: float) -> int:
        """SIGTERM, as an orchestrator stops it; its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
