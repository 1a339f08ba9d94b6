"""`changeflow`: the command for people. Tenancy through the models, tokens through the Ledger,
requests and deployments through the lifecycle's typed client (client/lifecycle.py).

Configuration is the workers' (infra/settings.py): DATABASE_URL and TEMPORAL_ADDRESS, or the
embedded stack `make dev` runs under CHANGEFLOW_DATA_DIR. Every command takes --json; the exit
codes are in cli/runner.py.

Each command group is a module of its own (GROUPS), imported only when one of its commands runs
or its help is asked: `changeflow --help` loads typer alone, and a tenancy command never the
commerce code, git or Temporal (tests/test_cli_imports.py holds this).
"""

import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperGroup


@dataclass(frozen=True)
class Group:
    module: str
    attribute: str
    # The group's own help, repeated here so that listing the groups loads none of them
    # (tests/test_cli_imports.py checks the two agree).
    help: str


GROUPS = {
    "tenant": Group("cli.tenants", "tenant_app", "Tenants: the isolation and billing boundary."),
    "user": Group("cli.users", "user_app", "A tenant's people and their roles."),
    "policy": Group("cli.policy", "policy_app", "How a tenant approves plans."),
    "project": Group("cli.projects", "project_app", "A tenant's repositories."),
    "tokens": Group("cli.tokens", "tokens_app", "A tenant's token account, through the ledger."),
    "request": Group("cli.requests", "request_app", "Change requests: the prompt lifecycle."),
    "deployment": Group(
        "cli.deployments", "deployment_app", "Deployments and operators' rollbacks."
    ),
    "connector": Group(
        "cli.connectors", "connector_app", "A tenant's connections to outside systems (Shopify)."
    ),
    "commerce": Group(
        "cli.commerce", "commerce_app", "Commerce records: order imports and reports."
    ),
    "notify": Group(
        "cli.notify",
        "notify_app",
        "A tenant's notification webhook: what waits for approval, and how requests end.",
    ),
}


class LazyGroup(TyperGroup):
    """A command group listed by its name and help; its module is imported when it is used."""

    def __init__(self, name: str, group: Group) -> None:
        super().__init__(name=name, help=group.help)
        self.group = group

    def load(self) -> TyperGroup:
        app = getattr(importlib.import_module(self.group.module), self.group.attribute)
        return typer.main.get_group(app)

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        # The parent group parses its command line, finds this group, and hands it the rest:
        # from here on the real group runs (its commands, its --help).
        return self.load().make_context(info_name, args, parent=parent, **extra)


class Changeflow(TyperGroup):
    """The root: every group of GROUPS, in its order, loaded lazily."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, group in GROUPS.items():
            self.add_command(LazyGroup(name, group), name)


app = typer.Typer(
    name="changeflow",
    cls=Changeflow,
    help="Tenants, people, policy, projects, tokens, change requests, deployments, connectors "
    "and reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def changeflow() -> None:
    # A callback makes typer build a group of the root, whose commands are GROUPS.
    pass


def main() -> None:
    """The console script: quiet worker logs, and os._exit (see infra/entry_points.py)."""
    from infra.entry_points import exit_process

    os.environ.setdefault("CHANGEFLOW_LOG_LEVEL", "WARNING")
    code = 1
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        # Spans exist only where a Temporal client was made, which loaded the tracing module.
        tracing = sys.modules.get("infra.tracing")
        if tracing is not None:
            tracing.flush_traces()
        exit_process(code)
