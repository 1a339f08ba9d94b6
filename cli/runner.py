"""How every command runs: settings, the stack, one coroutine, then its output and exit code.

Exit codes (README, "The changeflow command"):
  0  done
  1  refused: a typed error (its type and message are printed; under --json as {"error": ...})
  2  configuration: settings that cannot work, or a server that cannot be reached
  3  a lifecycle followed with --wait ended without completing, or the wait timed out
"""

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from cli.common import Refused, as_row, rich_table
from cli.stack import Stack
from infra.entry_points import EXIT_BAD_CONFIGURATION, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK

EXIT_REFUSED = EXIT_FAILURE
EXIT_NOT_COMPLETED = 3

Render = Callable[[Console], None]


@dataclass
class Outcome:
    """What a command hands back: `data` for --json, `render` for people, and its exit code."""

    data: Any
    render: Render
    code: int = EXIT_OK


def listing(
    title: str, columns: list[str], items: Sequence[Any], cells: Callable[[Any], list[Any]]
) -> Outcome:
    """A list command's outcome: the rows as JSON, or a table of `cells` of each for people."""
    rows = [cells(item) for item in items]
    return Outcome(
        [as_row(item) for item in items],
        lambda out: out.print(rich_table(title, columns, rows)),
    )


def jsonable(value: Any) -> Any:
    """Rows and contract models as plain JSON values (uuids and datetimes as strings)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    return json.loads(json.dumps(value, default=str))


def _raised(exc: BaseException, module: str, name: str) -> bool:
    """Whether exc is module's exception `name`. A module the command never imported raised
    none, so this loads nothing: a tenancy command never loads the ledger or Temporal."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, getattr(loaded, name))


def _refusal(exc: BaseException) -> tuple[str, str] | None:
    if isinstance(exc, Refused) or _raised(exc, "client.lifecycle", "LifecycleRefused"):
        return exc.error_type, exc.message  # type: ignore[attr-defined]
    for module, name in (
        ("activities.ledger", "LedgerError"),
        ("activities.connectors", "ConnectorError"),
        ("activities.credentials", "CredentialError"),
    ):
        if _raised(exc, module, name):
            return str(exc.error_type), str(exc)  # type: ignore[attr-defined]
    return None


def run(json_output: bool, work: Callable[[Stack, Console], Awaitable[Outcome]]) -> NoReturn:
    """Run `work` with a stack and exit with its code (see the module's table)."""
    out = Console(soft_wrap=True)
    # Progress goes to stderr under --json, so stdout stays one JSON document.
    progress = Console(stderr=True, soft_wrap=True) if json_output else out
    err = Console(stderr=True, soft_wrap=True)
    from infra.logging import configure_logging
    from infra.settings import ConfigurationError, load_settings

    try:
        settings = load_settings()
        configure_logging(settings)
        outcome = asyncio.run(_within_stack(settings, progress, work))
    except ConfigurationError as exc:
        _fail(json_output, err, "ConfigurationError", str(exc), EXIT_BAD_CONFIGURATION)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        refusal = _refusal(exc)
        if refusal is None:
            raise
        _fail(json_output, err, *refusal, EXIT_REFUSED)
    if json_output:
        sys.stdout.write(json.dumps(jsonable(outcome.data), indent=2) + "\n")
    else:
        outcome.render(out)
    raise typer.Exit(outcome.code)


async def _within_stack(
    settings: Any, progress: Console, work: Callable[[Stack, Console], Awaitable[Outcome]]
) -> Outcome:
    async with Stack(settings) as stack:
        return await work(stack, progress)


def _fail(json_output: bool, err: Console, error_type: str, message: str, code: int) -> NoReturn:
    if json_output:
        document = {"error": {"type": error_type, "message": message}}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        label = "refused" if code == EXIT_REFUSED else "configuration"
        err.print(f"[bold red]{label}[/]: {error_type}: {escape(message)}", highlight=False)
    raise typer.Exit(code)
