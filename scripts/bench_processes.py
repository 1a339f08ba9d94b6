"""Worker processes of `make bench-lifecycle`: started from the resolved settings the way an
operator configures one (environment variables), watched, measured (resident memory) and
stopped."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from infra.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[1]
# What the resolved stack (and the benchmark) decided, handed to the worker processes; anything
# else (TLS, Temporal's API key, which queues to serve) reaches them from this process's own
# environment unchanged.
HANDED_DOWN = (
    "database_url",
    "db_pool_size",
    "temporal_address",
    "temporal_namespace",
    "task_queue",
    "deploy_task_queue",
    "max_concurrent_activities",
    "max_concurrent_workflow_tasks",
    "graceful_shutdown_seconds",
    # The model engine's endpoint (the benchmark's local stand-in).
    "model_base_url",
    "model_name",
    "model_api_key",
    "model_edit_attempts",
)
STOP_TIMEOUT_S = 60


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment that configures a worker process as `settings` are configured.

    Bytecode is cached under the data folder: workflow sandboxes import the workflow modules
    afresh for every run, and without a cache (PYTHONDONTWRITEBYTECODE) each import compiles
    the source again, which a deployed worker with compiled bytecode never does.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for field in HANDED_DOWN:
        value = getattr(settings, field)
        if value is not None:
            raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            env[env_name(field)] = str(raw)
    data_dir = settings.data_dir.resolve()
    env[env_name("data_dir")] = str(data_dir)
    env[env_name("workspace_dir")] = str(settings.resolved_workspace_dir.resolve())
    env[env_name("log_level")] = "WARNING"
    env[env_name("log_format")] = "json"
    env["PYTHONPYCACHEPREFIX"] = str(data_dir / "pycache")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


class WorkerProcess:
    """One worker process; its output goes to `log`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *argv], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float | None:
        """Resident memory (VmRSS) of the process; None where /proc is not there."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def check_running(self) -> None:
        code = self.process.poll()
        if code is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the {self.name} worker exited with {code}; its log ends:\n{tail}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def watch(processes: list[WorkerProcess]) -> None:
    """Raise as soon as one of the worker processes exits (a bench would otherwise wait on)."""
    while True:
        for process in processes:
            process.check_running()
        await asyncio.sleep(1)
