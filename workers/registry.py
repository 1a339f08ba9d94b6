"""Every workflow and activity the project has, per task queue. The worker entry point, the
tests and the benchmarks all register from here, so nothing is forgotten in one of them."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client

from models.db import SessionFactory
from workers.settings import Settings


@dataclass
class Dependencies:
    """What activity classes are built with."""

    settings: Settings
    sessions: SessionFactory
    # For activities that start or signal workflows (deployment lanes).
    client: Client


def workflows() -> list[type]:
    """Workflow classes; all run on settings.task_queue."""
    return []


def lifecycle_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    """Short activities (database, ledger, planning) for settings.task_queue."""
    return []


def deploy_activities(deps: Dependencies) -> list[Callable[..., Any]]:
    """Slow activities (release, verify, roll back) for settings.deploy_task_queue."""
    return []
