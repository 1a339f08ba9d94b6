"""Worker Versioning: which Worker Deployment version this process serves.

A rollout starts workers of a new build id beside the old ones, smoke-tests it with pinned
runs, ramps and then makes it current (README, Operations). Each workflow type says in its
`@workflow.defn` what happens to its runs across that change:

- PINNED: a run stays on the version it started on, so it never meets code other than its
  own and needs no patch. For runs that end within minutes (a deployment, a sync run, a
  report, a ledger sweep); the old version drains as they finish.
- AUTO_UPGRADE: a run moves to the current version at its next task. For runs that wait days
  (a change request at approval, a deployment lane): pinning them would keep every old
  version alive for as long as the slowest approver. Their code changes need
  `workflow.patched` or must replay the recorded histories (tests/test_replay.py).
"""

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from temporalio.common import WorkerDeploymentVersion
from temporalio.worker import WorkerDeploymentConfig

from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def default_build_id() -> str:
    """The package version, and the commit it was built from when this is a git checkout."""
    try:
        package = version("changeflow")
    except PackageNotFoundError:
        package = "0"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return package
    return f"{package}+{commit}" if commit else package


def deployment_version(settings: Settings) -> WorkerDeploymentVersion:
    return WorkerDeploymentVersion(
        deployment_name=settings.worker_deployment_name,
        build_id=settings.worker_build_id or default_build_id(),
    )


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """The Worker's deployment options; None while versioning is off."""
    if not settings.worker_versioning:
        return None
    # No default behaviour: a workflow type that does not choose one fails to register.
    return WorkerDeploymentConfig(version=deployment_version(settings), use_worker_versioning=True)
