"""An order file (a POS or marketplace export) read into validated rows, and those rows as the
Order and Customer records the sync's upsert stores. No I/O: the CLI checks a file with it
before staging it, the import activity reads the staged file with it.

A file is CSV with a header row, or JSON: an array of objects with the same keys. A file that
is neither, or lacks a required column, is refused whole (ImportFileError); a row that does not
validate is reported (RowError) and the others are kept. Columns are documented in README.md,
"Importing orders from a file".
"""

import csv
import enum
import io
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from activities.shopify import iso_currency_exponent, minor_units
from models.commerce import OrderSource, OrderStatus
from workflows.contracts.commerce import RowError

REQUIRED_COLUMNS = ("external_id", "placed_at", "currency", "total")
# What an import may hold; more is refused before anything is staged.
MAX_FILE_BYTES = 20 * 1024 * 1024
# An import source's name: it is part of the records' keys and the workflow id.
SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class ImportFormat(enum.StrEnum):
    CSV = "csv"
    JSON = "json"


class ImportFileError(Exception):
    """The file as a whole cannot be imported; the message says why."""


class LineItemRow(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    title: str = Field(default="", max_length=300)
    sku: str | None = Field(default=None, max_length=100)
    quantity: int = Field(default=1, ge=0)
    unit_price: Decimal = Field(default=Decimal(0), ge=0)


class OrderRow(BaseModel):
    """One order of a file. Amounts are decimals in the currency (12.50), as exports write
    them; times need a UTC offset (2026-03-01T10:00:00+01:00 or ...Z)."""

    # Exports carry columns of their own (taxes, notes...): those are not ours to refuse.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    external_id: str = Field(min_length=1, max_length=150)
    placed_at: AwareDatetime
    currency: str = Field(pattern=r"^[A-Za-z]{3}$")
    total: Decimal = Field(ge=0)
    subtotal: Decimal | None = Field(default=None, ge=0)
    discount: Decimal = Field(default=Decimal(0), ge=0)
    refunded: Decimal = Field(default=Decimal(0), ge=0)
    name: str = Field(default="", max_length=100)
    channel: str = Field(default="", max_length=100)
    status: OrderStatus | None = None
    cancelled_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    customer_external_id: str | None = Field(default=None, max_length=150)
    customer_email: str | None = Field(default=None, max_length=320)
    customer_name: str = Field(default="", max_length=200)
    line_items: list[LineItemRow] = []

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        if iso_currency_exponent(value) is None:
            raise ValueError(f"{value!r} is not an ISO 4217 currency code")
        return value.upper()

    @field_validator("customer_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.fullmatch(value):
            raise ValueError("is not an email address")
        return value

    @field_validator("line_items", mode="before")
    @classmethod
    def _json_cell(cls, value: Any) -> Any:
        # A CSV cell holds the line items as a JSON array.
        if isinstance(value, str):
            try:
                return json.loads(value, parse_float=Decimal)
            except json.JSONDecodeError:
                raise ValueError("is not a JSON array of line items") from None
        return value

    def problems(self) -> list[tuple[str, str]]:
        """What the field rules cannot see: amounts against the currency and each other."""
        found: list[tuple[str, str]] = []
        places = iso_currency_exponent(self.currency) or 0
        amounts = {
            "total": self.total,
            "subtotal": self.subtotal,
            "discount": self.discount,
            "refunded": self.refunded,
            **{
                f"line_items.{i}.unit_price": item.unit_price
                for i, item in enumerate(self.line_items)
            },
        }
        for field, amount in amounts.items():
            if amount is not None and amount != amount.quantize(Decimal(1).scaleb(-places)):
                found.append((field, f"has more than {places} decimals for {self.currency}"))
        if self.refunded > self.total:
            found.append(("refunded", "is more than the total"))
        # Amounts are after discounts: a discount beyond the total (or, when given, beyond
        # the line items it was taken from) is a typo that would outweigh the sale.
        items = sum((i.unit_price * i.quantity for i in self.line_items), Decimal(0))
        if self.discount > max(self.total, items):
            found.append(("discount", "is more than the order's total"))
        return found

    @property
    def order_status(self) -> OrderStatus:
        if self.status is not None:
            return self.status
        if self.cancelled_at is not None:
            return OrderStatus.CANCELLED
        if self.total > 0 and self.refunded == self.total:
            return OrderStatus.REFUNDED
        return OrderStatus.PAID

    @property
    def customer_key(self) -> str | None:
        """The customer's id within the source: its own, else its email."""
        if self.customer_external_id:
            return self.customer_external_id
        return f"email:{self.customer_email.lower()}" if self.customer_email else None


@dataclass
class ParsedOrders:
    rows: int
    valid: list[OrderRow]
    errors: list[RowError]


def source_name(value: str) -> str:
    """The import source's name as keys and ids use it; ValueError when it cannot be one."""
    name = value.strip().lower()
    if not SOURCE_NAME.fullmatch(name):
        raise ValueError(
            f"source {value!r} must be lower-case letters, digits, '-' or '_' (at most 40)"
        )
    return name


def decode(data: bytes) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise ImportFileError(f"the file has {len(data)} bytes; at most {MAX_FILE_BYTES}")
    try:
        return data.decode("utf-8-sig")  # spreadsheets write a byte order mark
    except UnicodeDecodeError:
        raise ImportFileError("the file is not UTF-8 text (CSV or JSON)") from None


def parse_orders(content: str, fmt: ImportFormat) -> ParsedOrders:
    """Every row of the file, validated; raises ImportFileError when the file is unreadable."""
    records = _csv_records(content) if fmt is ImportFormat.CSV else _json_records(content)
    valid: list[OrderRow] = []
    errors: list[RowError] = []
    first_row_of: dict[str, int] = {}
    for number, record in records:
        if not isinstance(record, dict):
            errors.append(RowError(row=number, field="", message="is not an object"))
            continue
        extra = [cell for cell in record.get(None) or [] if cell != ""]
        if extra:
            # csv.DictReader puts cells beyond the header under None: an unquoted comma
            # split a value, and every cell after it may be in the wrong column.
            errors.append(
                RowError(
                    row=number,
                    field="",
                    message=f"has {len(extra)} more cell(s) than the header "
                    "(quote a value that holds a comma)",
                )
            )
            continue
        try:
            row = OrderRow.model_validate(_present(record))
        except ValidationError as err:
            errors.extend(
                RowError(row=number, field=".".join(str(p) for p in e["loc"]), message=e["msg"])
                for e in err.errors()
            )
            continue
        problems = row.problems()
        if row.external_id in first_row_of:
            problems.append(
                ("external_id", f"repeats the order of row {first_row_of[row.external_id]}")
            )
        if problems:
            errors.extend(RowError(row=number, field=f, message=m) for f, m in problems)
            continue
        first_row_of[row.external_id] = number
        valid.append(row)
    return ParsedOrders(rows=len(records), valid=valid, errors=errors)


def _present(record: dict[Any, Any]) -> dict[str, Any]:
    """A record without its empty cells, so an empty optional column means "not given"."""
    return {
        str(key).strip().lower(): value
        for key, value in record.items()
        if key is not None and value is not None and value != ""
    }


def _csv_records(content: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        header = [name.strip().lower() for name in reader.fieldnames or []]
        if not header:
            raise ImportFileError("the file is empty: a CSV order file starts with a header row")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ImportFileError(
                f"the CSV header lacks the required column(s) {', '.join(missing)} "
                f"(it needs {', '.join(REQUIRED_COLUMNS)})"
            )
        # Row numbers as a spreadsheet shows them: the header is row 1.
        return [(number, record) for number, record in enumerate(reader, start=2)]
    except csv.Error as err:
        raise ImportFileError(f"the file is not valid CSV: {err}") from None


def _json_records(content: str) -> list[tuple[int, Any]]:
    try:
        document = json.loads(content, parse_float=Decimal)
    except json.JSONDecodeError as err:
        raise ImportFileError(f"the file is not valid JSON: {err}") from None
    if not isinstance(document, list):
        raise ImportFileError("a JSON order file is an array of order objects")
    return list(enumerate(document, start=1))


def record_key(source: str, external_id: str) -> str:
    """An imported record's external id: unique within OrderSource.IMPORT across sources."""
    return f"{source}/{external_id}"


def customer_values(
    row: OrderRow, *, tenant_id: uuid.UUID, source: str, version: datetime
) -> dict[str, Any] | None:
    """The row's customer as a Customer upsert row (the columns of commerce_sync's)."""
    key = row.customer_key
    if key is None:
        return None
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "source": OrderSource.IMPORT.value,
        "external_id": record_key(source, key),
        "email": row.customer_email,
        "name": row.customer_name,
        "phone": None,
        "source_updated_at": row.updated_at or version,
    }


def order_values(
    row: OrderRow,
    *,
    tenant_id: uuid.UUID,
    source: str,
    customers: dict[str, uuid.UUID],
    version: datetime,
) -> dict[str, Any]:
    """The row as an Order upsert row (the columns of commerce_sync's order_row). Without an
    updated_at of its own, a row is as new as the file that brought it (`version`)."""
    currency = row.currency

    def cents(amount: Decimal) -> int:
        return minor_units(str(amount), currency)

    key = row.customer_key
    total, refunded = cents(row.total), cents(row.refunded)
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "connector_id": None,
        "customer_id": customers.get(record_key(source, key)) if key else None,
        "source": OrderSource.IMPORT.value,
        "external_id": record_key(source, row.external_id),
        "name": row.name or row.external_id[:100],
        "channel": row.channel or source,
        "status": row.order_status.value,
        "subtotal_cents": cents(row.subtotal if row.subtotal is not None else row.total),
        "discount_cents": cents(row.discount),
        "refunded_cents": refunded,
        "total_cents": total,
        "net_cents": total - refunded,
        "currency": currency,
        "line_items": [
            {
                "title": item.title,
                "sku": item.sku,
                "quantity": item.quantity,
                "unit_price_cents": cents(item.unit_price),
            }
            for item in row.line_items
        ],
        "placed_at": row.placed_at,
        "cancelled_at": row.cancelled_at,
        "source_updated_at": row.updated_at or version,
    }
