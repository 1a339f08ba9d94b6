"""Worker Versioning: which Worker Deployment version this process serves.

A rollout starts workers of a new build id beside the old ones, smoke-tests it with pinned
runs, ramps and then makes it current (README, "Upgrading workers"). How each workflow type's
runs cross that change is chosen in workflows/versioned.py.
"""

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from temporalio.common import WorkerDeploymentVersion
from temporalio.worker import WorkerDeploymentConfig

from infra.settings import Settings

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
    # No default behaviour: every workflow type chose one (workflows/versioned.py).
    return WorkerDeploymentConfig(version=deployment_version(settings), use_worker_versioning=True)
