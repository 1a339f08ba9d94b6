"""What every command group shares: the --json, --tenant and --token options, how a command
says no, and how rows print."""

import uuid
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from workflows.contracts.errors import ErrorType

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
TenantRef = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id or slug.")]
Wait = Annotated[
    bool, typer.Option("--wait", help="Follow the lifecycle until a person must act or it ends.")
]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds --wait follows at most.")]
DEFAULT_WAIT_S = 600.0
# Without --token, the development signer signs when the workers trust it (no
# CHANGEFLOW_DECISION_JWKS); in production the identity service's token is passed here.
Token = Annotated[str | None, typer.Option("--token", help="The decision's signed token (a JWT).")]


class Refused(Exception):
    """A command said no: `error_type` names the rule, `message` says why."""

    def __init__(self, error_type: ErrorType | str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = str(error_type)
        self.message = message


def parse_id(value: str) -> uuid.UUID:
    """A request's (or a deployment's) id as given on the command line."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Refused(ErrorType.INVALID_REQUEST, f"{value!r} is not a request id") from None


def as_row(value: Any) -> dict[str, Any]:
    """A row or contract model as JSON values."""
    return value.model_dump(mode="json")  # type: ignore[no-any-return]


def rich_table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        # Ids are copied into the next command: never cut.
        table.add_column(column, no_wrap=column == "id", overflow="fold")
    for cells in rows:
        table.add_row(*(escape("" if cell is None else str(cell)) for cell in cells))
    return table


def timestamp(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""
