"""What every command group shares: the --json and --tenant options and how rows print."""

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
TenantRef = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id or slug.")]
Wait = Annotated[
    bool, typer.Option("--wait", help="Follow the lifecycle until a person must act or it ends.")
]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds --wait follows at most.")]
DEFAULT_WAIT_S = 600.0


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
