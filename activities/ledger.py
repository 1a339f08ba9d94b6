"""The token ledger: exactly-once writes on a tenant's TokenAccount.

Modelled on TigerBeetle's transfers (ids as idempotency keys, pending transfers that post or
void at most once, balance limits) and Stripe's idempotency keys. Each operation is one
database transaction. Its fast path is one SQL statement, and so one round trip: a conditional
UPDATE of the account row (the row lock serialises writers of one account and the WHERE clause
enforces the floor), then the entry, the idempotency record and any alert. Refusals take the
slow path, an explicit transaction that finds out why and records it. Unique constraints are
the backstop for races between processes; a violation retries the operation, which then finds
the winner's record and returns its result. The statements are in activities/ledger_sql.py.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter

from activities import ledger_sql as sql
from models.billing import (
    TIER_ALLOWANCES,
    HoldStatus,
    LedgerOperation,
    LedgerRequestOutcome,
    TokenAccount,
    TokenTransactionKind,
)
from models.db import SessionFactory, asyncpg_dsn
from models.tenancy import PlanTier
from workflows.contracts.billing import (
    AlertView,
    BalanceView,
    EntryView,
    HoldView,
    SettlementView,
)
from workflows.contracts.errors import ErrorType

log = structlog.get_logger("changeflow.ledger")

LOW_BALANCE_ALERTS = Counter(
    "changeflow_token_low_balance_alerts",
    "Low-balance alerts raised (downward threshold crossings).",
    ["plan_tier", "threshold"],
)
LOW_BALANCE_RECOVERIES = Counter(
    "changeflow_token_low_balance_recoveries",
    "Low-balance alerts resolved by the balance climbing back.",
    ["plan_tier", "threshold"],
)

MAX_KEY_LENGTH = 300
MAX_AMOUNT = 10**15
# Races between processes surface as these; the retry finds the winner's committed state.
_RETRYABLE_SQLSTATES = {"23505", "40001", "40P01"}
_ATTEMPTS = 5


# --- errors -------------------------------------------------------------------------------


class LedgerError(Exception):
    """A domain refusal. `error_type` is the ApplicationError type activities raise."""

    error_type: ErrorType = ErrorType.LEDGER_ERROR


class InsufficientTokens(LedgerError):
    error_type = ErrorType.INSUFFICIENT_TOKENS


class IdempotencyConflict(LedgerError):
    error_type = ErrorType.IDEMPOTENCY_CONFLICT


class HoldNotActive(LedgerError):
    error_type = ErrorType.HOLD_NOT_ACTIVE


class AccountNotFound(LedgerError):
    error_type = ErrorType.ACCOUNT_NOT_FOUND


class InvalidAmount(LedgerError):
    error_type = ErrorType.INVALID_AMOUNT


class EntryNotRefundable(LedgerError):
    error_type = ErrorType.ENTRY_NOT_REFUNDABLE


class InvalidPeriod(LedgerError):
    error_type = ErrorType.INVALID_PERIOD


_ERRORS_BY_TYPE: dict[str, type[LedgerError]] = {
    cls.error_type: cls
    for cls in (
        InsufficientTokens,
        IdempotencyConflict,
        HoldNotActive,
        AccountNotFound,
        InvalidAmount,
        EntryNotRefundable,
        InvalidPeriod,
    )
}


# Returned by an attempt whose slow path changed state (released expired holds): run again.
_RETRY = object()


@dataclass
class _Outcome:
    """What a committed write tells the operator about: alerts raised or resolved."""

    account_id: uuid.UUID
    tenant_id: uuid.UUID
    plan_tier: str
    balance: int
    raised: Sequence[int] = field(default_factory=tuple)
    resolved: Sequence[int] = field(default_factory=tuple)


@dataclass(frozen=True)
class _Request:
    """What an idempotency key stands for: the same key must come back with the same values."""

    account_id: uuid.UUID
    key: str
    operation: LedgerOperation
    amount: int | None
    subject_id: uuid.UUID | None = None


@dataclass
class _Tx:
    """One attempt's connection, and what to announce once it has committed.

    The fast path is a single statement, which PostgreSQL runs as a transaction of its own:
    one round trip, no BEGIN or COMMIT. Anything that needs more than one statement (the
    refusals, opening an account) calls `begin()` first.
    """

    conn: asyncpg.Connection
    announcements: list[_Outcome] = field(default_factory=list)
    transaction: Any = None

    async def begin(self) -> None:
        if self.transaction is None:
            self.transaction = self.conn.transaction()
            await self.transaction.start()


async def no_session_state(conn: asyncpg.Connection) -> None:
    """The ledger's connections carry no session state (no LISTEN, advisory locks, SET), so
    the pool's reset query, a round trip per release, is skipped; asyncpg still ends any
    open transaction before this runs."""


# One pool per database and event loop, shared by every Ledger built on it.
_POOLS: dict[tuple[str, asyncio.AbstractEventLoop], asyncpg.Pool] = {}
_POOL_LOCKS: dict[tuple[str, asyncio.AbstractEventLoop], asyncio.Lock] = {}

# Printable, no surrounding whitespace: PostgreSQL text cannot hold a NUL, and a key with
# control characters is a caller's bug to name, not a row to write.
_KEY = re.compile(r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$")
# A grant period is a calendar month, 'YYYY-MM': anything else would be a new key, a new grant.
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def whole_tokens(value: object) -> bool:
    """Token amounts are integers; a bool is an int to Python, but never an amount."""
    return isinstance(value, int) and not isinstance(value, bool)


def current_period(now: datetime | None = None) -> str:
    """Grant periods are calendar months in UTC: '2026-11'."""
    return (now or datetime.now(UTC)).strftime("%Y-%m")


class Ledger:
    """Operations on token accounts. Each call is one database transaction; safe to call from
    any number of processes at once.

    The ledger talks to PostgreSQL through its own small asyncpg pool on the sessions'
    database: the operations need no ORM state, and the ORM pool's pre-ping (three round trips
    per checkout) would cost more than the work itself on a hot account.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        clock: Callable[[], datetime] | None = None,
        pool_size: int | None = None,
    ) -> None:
        engine = sessions.kw["bind"]
        self._dsn = asyncpg_dsn(engine.url.render_as_string(hide_password=False))
        self._pool_size = pool_size or getattr(engine.pool, "size", lambda: 10)()
        self._clock = clock

    async def close(self) -> None:
        """Close the connections the ledgers of this database share in this event loop."""
        pool = _POOLS.pop((self._dsn, asyncio.get_running_loop()), None)
        if pool is not None:
            await pool.close()

    # -- plumbing --

    async def _connections(self) -> asyncpg.Pool:
        loop = asyncio.get_running_loop()
        key = (self._dsn, loop)
        if (pool := _POOLS.get(key)) is None:
            async with _POOL_LOCKS.setdefault(key, asyncio.Lock()):
                if (pool := _POOLS.get(key)) is None:
                    pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=0,
                        max_size=self._pool_size,
                        # Every statement here touches a handful of rows by key, so one
                        # generic plan fits all; re-planning the CTEs per call cost more
                        # than executing them.
                        server_settings={"plan_cache_mode": "force_generic_plan"},
                        reset=no_session_state,
                    )
                    _POOLS[key] = pool
        return pool

    def _now(self) -> datetime | None:
        return self._clock() if self._clock else None

    async def _transaction(self, attempt: Callable[[_Tx], Awaitable[Any]]) -> Any:
        """Run `attempt` as one transaction (see _Tx); commit unless it raises. It may return
        a LedgerError (committed, then raised: a recorded refusal) or _RETRY."""
        pool = await self._connections()
        for n in range(_ATTEMPTS):
            try:
                async with pool.acquire() as conn:
                    tx = _Tx(conn)
                    try:
                        outcome: Any = await attempt(tx)
                    except BaseException:
                        if tx.transaction is not None:
                            await tx.transaction.rollback()
                        raise
                    if tx.transaction is not None:
                        await tx.transaction.commit()
            except asyncpg.PostgresError as exc:
                if exc.sqlstate in _RETRYABLE_SQLSTATES and n < _ATTEMPTS - 1:
                    continue
                raise
            for announcement in tx.announcements:
                self._announce(announcement)
            if outcome is _RETRY:
                continue
            if isinstance(outcome, LedgerError):
                raise outcome
            return outcome
        raise RuntimeError("ledger operation kept racing; giving up")  # pragma: no cover

    async def _read(self, statement: str, params: dict[str, Any]) -> Any:
        pool = await self._connections()
        async with pool.acquire() as conn:
            return await sql.fetchrow(conn, statement, params)

    @staticmethod
    def _check(amount: object, key: object, *, allow_zero: bool = False) -> None:
        """An amount (an int, never a bool, None or a float) in range, and a usable key."""
        low = 0 if allow_zero else 1
        if not whole_tokens(amount) or not low <= amount <= MAX_AMOUNT:  # type: ignore[operator]
            raise InvalidAmount(f"amount must be an integer in [{low}, {MAX_AMOUNT}]")
        Ledger._check_key(key)

    @staticmethod
    def _check_key(key: object) -> None:
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
            raise InvalidAmount(
                f"idempotency key must be a string of 1..{MAX_KEY_LENGTH} printable characters "
                "without surrounding whitespace"
            )

    def _announce(self, outcome: _Outcome) -> None:
        for threshold in outcome.raised:
            LOW_BALANCE_ALERTS.labels(outcome.plan_tier, str(threshold)).inc()
            log.warning(
                "token_balance_low",
                account_id=str(outcome.account_id),
                tenant_id=str(outcome.tenant_id),
                plan_tier=outcome.plan_tier,
                threshold=threshold,
                balance=outcome.balance,
            )
        for threshold in outcome.resolved:
            LOW_BALANCE_RECOVERIES.labels(outcome.plan_tier, str(threshold)).inc()
            log.info(
                "token_balance_recovered",
                account_id=str(outcome.account_id),
                tenant_id=str(outcome.tenant_id),
                plan_tier=outcome.plan_tier,
                threshold=threshold,
                balance=outcome.balance,
            )

    async def _prior(self, tx: _Tx, request: _Request) -> Any:
        """The request already recorded under this key, after checking it is the same request;
        a recorded failure is raised again."""
        key = request.key
        prior = await sql.fetchrow(
            tx.conn, sql.PRIOR, {"account_id": request.account_id, "key": key}
        )
        if prior is None:
            return None
        same = (
            prior["operation"] == request.operation.value
            and prior["amount"] == request.amount
            and prior["subject_id"] == request.subject_id
        )
        if not same:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used for a different request "
                f"({prior['operation']}, amount {prior['amount']}); use a new key"
            )
        if prior["outcome"] == LedgerRequestOutcome.FAILED.value:
            error = _ERRORS_BY_TYPE.get(prior["error_type"], LedgerError)
            raise error(f"{prior['error_message']} (recorded under key {key!r})")
        return prior

    async def _fail(self, tx: _Tx, error: LedgerError, request: _Request) -> LedgerError:
        """Record the refusal under the key, so a retry with it keeps failing; the caller
        returns it to be raised once committed."""
        await sql.fetch(
            tx.conn,
            sql.RECORD_FAILURE,
            {
                "account_id": request.account_id,
                "key": request.key,
                "operation": request.operation.value,
                "amount": request.amount,
                "subject_id": request.subject_id,
                "error_type": error.error_type.value,
                "error_message": str(error)[:500],
                "now": self._now(),
            },
        )
        return error

    async def _expire_for(self, tx: _Tx, account_id: uuid.UUID) -> int:
        row = await sql.fetchrow(
            tx.conn,
            sql.EXPIRE_ACCOUNT,
            {"account_id": account_id, "batch_size": 10_000, "now": self._now()},
        )
        return int(row[0])

    async def _available(self, tx: _Tx, account_id: uuid.UUID) -> int:
        row = await sql.fetchrow(
            tx.conn,
            "SELECT balance - held - floor FROM token_accounts WHERE id = CAST(:id AS uuid)",
            {"id": account_id},
        )
        return int(row[0])

    async def _require_account(self, tx: _Tx, account_id: uuid.UUID) -> None:
        found = await sql.fetchrow(
            tx.conn,
            "SELECT 1 FROM token_accounts WHERE id = CAST(:id AS uuid)",
            {"id": account_id},
        )
        if found is None:
            raise AccountNotFound(f"no token account {account_id}")

    async def _entry_view(self, tx: _Tx, transaction_id: uuid.UUID) -> EntryView:
        return _entry(await sql.fetchrow(tx.conn, sql.ENTRY, {"id": transaction_id}))

    # -- accounts --

    async def open_account(
        self, tenant_id: uuid.UUID, *, plan_tier: PlanTier | None = None, floor: int = 0
    ) -> TokenAccount:
        """The tenant's account for a tier (its current tier by default); opening twice
        returns the same account."""
        if not whole_tokens(floor) or floor > 0:
            raise InvalidAmount("an account's floor is a whole number of tokens, at most zero")
        tier = plan_tier.value if plan_tier else None

        async def attempt(tx: _Tx) -> TokenAccount:
            await tx.begin()
            await sql.fetch(
                tx.conn,
                """
                INSERT INTO token_accounts
                    (id, tenant_id, plan_tier, balance, floor, held, last_sequence,
                     created_at, updated_at)
                SELECT CAST(:id AS uuid), t.id, COALESCE(CAST(:tier AS varchar), t.plan_tier),
                       0, CAST(:floor AS bigint), 0, 0, now(), now()
                FROM tenants t WHERE t.id = CAST(:tenant_id AS uuid)
                ON CONFLICT (tenant_id, plan_tier) DO NOTHING
                """,
                {"id": uuid.uuid4(), "tenant_id": tenant_id, "tier": tier, "floor": floor},
            )
            return await self._account_row(tx.conn, tenant_id=tenant_id, tier=tier)

        return await self._transaction(attempt)

    @staticmethod
    async def _account_row(
        conn: asyncpg.Connection, *, tenant_id: uuid.UUID, tier: str | None
    ) -> TokenAccount:
        row = await sql.fetchrow(
            conn,
            """
            SELECT a.* FROM token_accounts a JOIN tenants t ON t.id = a.tenant_id
            WHERE a.tenant_id = CAST(:tenant_id AS uuid)
              AND a.plan_tier = COALESCE(CAST(:tier AS varchar), t.plan_tier)
            """,
            {"tenant_id": tenant_id, "tier": tier},
        )
        if row is None:
            raise AccountNotFound(
                f"tenant {tenant_id} has no token account "
                + (f"for tier {tier}" if tier else "for its plan tier")
            )
        return TokenAccount.model_validate(dict(row))

    async def account_for_tenant(self, tenant_id: uuid.UUID) -> TokenAccount:
        """The account a tenant spends from: the one for its current plan tier."""
        pool = await self._connections()
        async with pool.acquire() as conn:
            return await self._account_row(conn, tenant_id=tenant_id, tier=None)

    async def active_holds_by_key(self, tenant_id: uuid.UUID, key_prefix: str) -> list[HoldView]:
        """A tenant's unresolved holds whose reservation key starts with `key_prefix` (the
        holds one workflow reserved: its keys start with its workflow id)."""
        self._check_key(key_prefix)
        pool = await self._connections()
        async with pool.acquire() as conn:
            rows = await sql.fetch(
                conn,
                """
                SELECT h.id, h.account_id, h.amount, h.status, h.expires_at
                FROM token_holds h
                WHERE h.tenant_id = CAST(:tenant_id AS uuid) AND h.resolved_at IS NULL
                  AND starts_with(h.idempotency_key, :prefix)
                ORDER BY h.created_at
                """,
                {"tenant_id": tenant_id, "prefix": key_prefix},
            )
        return [_hold(row) for row in rows]

    async def balance(self, account_id: uuid.UUID) -> BalanceView:
        """Balance and availability now; holds past their expiry no longer count, swept or
        not."""
        row = await self._read(
            f"""
            SELECT a.id, a.tenant_id, a.plan_tier, a.balance, a.floor,
                   (SELECT COALESCE(sum(h.amount), 0) FROM token_holds h
                    WHERE h.account_id = a.id AND h.status = 'active'
                      AND h.expires_at > {sql.NOW}) AS held
            FROM token_accounts a WHERE a.id = CAST(:account_id AS uuid)
            """,
            {"account_id": account_id, "now": self._now()},
        )
        if row is None:
            raise AccountNotFound(f"no token account {account_id}")
        held = int(row["held"])
        return BalanceView(
            account_id=row["id"],
            tenant_id=row["tenant_id"],
            plan_tier=row["plan_tier"],
            balance=row["balance"],
            floor=row["floor"],
            held=held,
            available=row["balance"] - held,
        )

    # -- entries --

    async def _write_entry(
        self,
        *,
        account_id: uuid.UUID,
        amount: int,
        key: str,
        operation: LedgerOperation,
        kind: TokenTransactionKind,
        debit: bool,
        description: str = "",
        reverses_id: uuid.UUID | None = None,
    ) -> EntryView:
        self._check(amount, key)
        statement = sql.DEBIT if debit else sql.CREDIT

        async def attempt(tx: _Tx) -> EntryView | LedgerError | object:
            tx_id = uuid.uuid4()
            params = {
                "account_id": account_id,
                "amount": amount,
                "key": key,
                "kind": kind.value,
                "operation": operation.value,
                "tx_id": tx_id,
                "reverses_id": reverses_id,
                "description": description[:500],
                "now": self._now(),
            }
            row = await sql.fetchrow(tx.conn, statement, params)
            if row is not None:
                outcome = _Outcome(account_id, row["tenant_id"], row["plan_tier"], row["balance"])
                if debit:
                    outcome.raised = row["thresholds"]
                else:
                    outcome.resolved = row["thresholds"]
                tx.announcements.append(outcome)
                return EntryView(
                    transaction_id=tx_id,
                    account_id=account_id,
                    kind=kind.value,
                    direction="debit" if debit else "credit",
                    amount=amount,
                    balance_after=row["balance"],
                )
            # Refused: a replay, a missing account, or (debits only) not enough tokens.
            await tx.begin()
            request = _Request(
                account_id=account_id,
                key=key,
                operation=operation,
                amount=amount,
                subject_id=reverses_id,
            )
            prior = await self._prior(tx, request)
            if prior is not None:
                return await self._entry_view(tx, prior["transaction_id"])
            await self._require_account(tx, account_id)
            if not debit:  # pragma: no cover - a credit is refused only for the reasons above
                raise RuntimeError("credit refused without a reason")
            if await self._expire_for(tx, account_id):
                return _RETRY
            available = await self._available(tx, account_id)
            return await self._fail(
                tx,
                InsufficientTokens(
                    f"{operation.value} of {amount} tokens refused: {available} available"
                ),
                request,
            )

        return await self._transaction(attempt)

    async def top_up(
        self, account_id: uuid.UUID, amount: int, *, key: str, description: str = ""
    ) -> EntryView:
        return await self._write_entry(
            account_id=account_id,
            amount=amount,
            key=key,
            operation=LedgerOperation.TOP_UP,
            kind=TokenTransactionKind.TOP_UP,
            debit=False,
            description=description,
        )

    async def grant(
        self, account_id: uuid.UUID, *, period: str | None = None, amount: int | None = None
    ) -> EntryView:
        """The tier's grant for a period (a calendar month by default), at most once per
        period: the key is derived from the period, so a second grant replays the first."""
        period = current_period(self._now()) if period is None else period
        if not isinstance(period, str) or not _PERIOD.fullmatch(period):
            raise InvalidPeriod(f"a grant period is a calendar month 'YYYY-MM', not {period!r}")
        if amount is None:
            row = await self._read(
                "SELECT plan_tier FROM token_accounts WHERE id = CAST(:id AS uuid)",
                {"id": account_id},
            )
            if row is None:
                raise AccountNotFound(f"no token account {account_id}")
            amount = TIER_ALLOWANCES[PlanTier(row["plan_tier"])].grant_per_period
        return await self._write_entry(
            account_id=account_id,
            amount=amount,
            key=f"grant:{period}",
            operation=LedgerOperation.GRANT,
            kind=TokenTransactionKind.GRANT,
            debit=False,
            description=f"plan grant for {period}",
        )

    async def grant_all(self, *, period: str) -> int:
        """Every tenant's grant for `period` on the account of its current tier, each at most
        once (see grant); returns how many accounts hold it. An account of a tier the tenant
        has left gets nothing more."""
        pool = await self._connections()
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT a.id FROM token_accounts a JOIN tenants t"
                " ON t.id = a.tenant_id AND t.plan_tier = a.plan_tier ORDER BY a.id"
            )
        for row in rows:
            await self.grant(row["id"], period=period)
        return len(rows)

    async def charge(
        self, account_id: uuid.UUID, amount: int, *, key: str, description: str = ""
    ) -> EntryView:
        """A direct debit of available tokens (balance minus live holds), never below the
        floor."""
        return await self._write_entry(
            account_id=account_id,
            amount=amount,
            key=key,
            operation=LedgerOperation.CHARGE,
            kind=TokenTransactionKind.CHARGE,
            debit=True,
            description=description,
        )

    async def adjust(
        self, account_id: uuid.UUID, delta: int, *, key: str, description: str = ""
    ) -> EntryView:
        """An operator's correction: a credit (delta > 0) or a debit (delta < 0) that still
        respects the floor."""
        if not whole_tokens(delta) or delta == 0:
            raise InvalidAmount("an adjustment needs a non-zero integer delta")
        return await self._write_entry(
            account_id=account_id,
            amount=abs(delta),
            key=key,
            operation=LedgerOperation.ADJUSTMENT,
            kind=TokenTransactionKind.ADJUSTMENT,
            debit=delta < 0,
            description=description,
        )

    async def refund(
        self, transaction_id: uuid.UUID, *, key: str, description: str = ""
    ) -> EntryView:
        """A new credit entry reversing a debit (charge or settlement) in full, at most once
        per original: a partial unique index on reverses_id decides races."""
        self._check_key(key)
        original = await self._read(sql.ENTRY, {"id": transaction_id})
        if original is None:
            raise EntryNotRefundable(f"no ledger entry {transaction_id}")
        if original["direction"] != "debit" or original["kind"] not in ("charge", "settlement"):
            raise EntryNotRefundable(
                f"entry {transaction_id} is a {original['kind']} {original['direction']}; "
                "only charges and settlements are refunded"
            )
        request = _Request(
            account_id=original["account_id"],
            key=key,
            operation=LedgerOperation.REFUND,
            amount=original["amount"],
            subject_id=transaction_id,
        )

        async def refused(tx: _Tx) -> EntryView | LedgerError | None:
            await tx.begin()
            prior = await self._prior(tx, request)
            if prior is not None:
                return await self._entry_view(tx, prior["transaction_id"])
            refunded_by = await sql.fetchrow(
                tx.conn,
                "SELECT id FROM token_transactions WHERE reverses_id = CAST(:id AS uuid)",
                {"id": transaction_id},
            )
            if refunded_by is None:
                return None
            return await self._fail(
                tx,
                EntryNotRefundable(
                    f"entry {transaction_id} was already refunded by {refunded_by['id']}"
                ),
                request,
            )

        for _ in range(_ATTEMPTS):
            answer = await self._transaction(refused)
            if answer is not None:
                return answer
            try:
                return await self._write_entry(
                    account_id=original["account_id"],
                    amount=original["amount"],
                    key=key,
                    operation=LedgerOperation.REFUND,
                    kind=TokenTransactionKind.REFUND,
                    debit=False,
                    description=description or f"refund of {transaction_id}",
                    reverses_id=transaction_id,
                )
            except asyncpg.UniqueViolationError:
                continue  # another refund of the original won; the next look reports it
        raise RuntimeError("refund kept racing; giving up")  # pragma: no cover

    # -- holds --

    async def reserve(
        self,
        account_id: uuid.UUID,
        amount: int,
        *,
        key: str,
        ttl: timedelta,
        description: str = "",
    ) -> HoldView:
        """Set tokens aside (a pending transfer) until settled, released or expired."""
        self._check(amount, key)
        if ttl <= timedelta(0):
            raise InvalidAmount("a hold needs a positive time to live")

        async def attempt(tx: _Tx) -> HoldView | LedgerError | object:
            hold_id = uuid.uuid4()
            params = {
                "account_id": account_id,
                "amount": amount,
                "key": key,
                "hold_id": hold_id,
                "ttl": ttl.total_seconds(),
                "description": description[:500],
                "now": self._now(),
            }
            row = await sql.fetchrow(tx.conn, sql.RESERVE, params)
            if row is not None:
                return HoldView(
                    hold_id=hold_id,
                    account_id=account_id,
                    amount=amount,
                    status=HoldStatus.ACTIVE,
                    expires_at=row["expires_at"],
                )
            await tx.begin()
            request = _Request(
                account_id=account_id, key=key, operation=LedgerOperation.RESERVE, amount=amount
            )
            prior = await self._prior(tx, request)
            if prior is not None:
                hold = await sql.fetchrow(
                    tx.conn, sql.HOLD, {"hold_id": prior["hold_id"], "now": None}
                )
                # The first answer: the hold as it was created.
                return _hold(hold, status=HoldStatus.ACTIVE)
            await self._require_account(tx, account_id)
            if await self._expire_for(tx, account_id):
                return _RETRY
            available = await self._available(tx, account_id)
            return await self._fail(
                tx,
                InsufficientTokens(
                    f"reservation of {amount} tokens refused: {available} available"
                ),
                request,
            )

        return await self._transaction(attempt)

    async def _hold_for_refusal(self, tx: _Tx, hold_id: uuid.UUID) -> Any:
        hold = await sql.fetchrow(tx.conn, sql.HOLD, {"hold_id": hold_id, "now": self._now()})
        if hold is None:
            raise HoldNotActive(f"no hold {hold_id}")
        return hold

    async def settle(
        self, hold_id: uuid.UUID, amount: int, *, key: str, description: str = ""
    ) -> SettlementView:
        """Post `amount` (up to what the hold holds) and release the rest, in one step, once."""
        self._check(amount, key, allow_zero=True)

        async def attempt(tx: _Tx) -> SettlementView | LedgerError:
            params = {
                "hold_id": hold_id,
                "amount": amount,
                "key": key,
                "tx_id": uuid.uuid4(),
                "description": description[:500],
                "now": self._now(),
            }
            row = await sql.fetchrow(tx.conn, sql.SETTLE, params)
            if row is not None:
                tx.announcements.append(
                    _Outcome(
                        row["account_id"],
                        row["tenant_id"],
                        row["plan_tier"],
                        row["balance"],
                        row["thresholds"],
                    )
                )
                return SettlementView(
                    hold_id=hold_id,
                    settled=amount,
                    released=row["held"] - amount,
                    transaction_id=row["transaction_id"],
                    balance_after=row["balance"],
                )
            await tx.begin()
            hold = await self._hold_for_refusal(tx, hold_id)
            request = _Request(
                account_id=hold["account_id"],
                key=key,
                operation=LedgerOperation.SETTLE,
                amount=amount,
                subject_id=hold_id,
            )
            prior = await self._prior(tx, request)
            if prior is not None:
                return SettlementView(
                    hold_id=hold_id,
                    settled=amount,
                    released=hold["amount"] - amount,
                    transaction_id=prior["transaction_id"],
                    balance_after=prior["result_balance"],
                )
            error: LedgerError
            if hold["status"] != HoldStatus.ACTIVE.value:
                error = HoldNotActive(f"hold {hold_id} is {hold['status']}; it cannot be settled")
            elif hold["expired"]:
                await self._expire_for(tx, hold["account_id"])
                error = HoldNotActive(f"hold {hold_id} expired at {hold['expires_at'].isoformat()}")
            elif amount > hold["amount"]:
                error = InvalidAmount(
                    f"cannot settle {amount} tokens on a hold of {hold['amount']}"
                )
            else:  # pragma: no cover - the statement refuses only for the reasons above
                raise RuntimeError(f"settle of hold {hold_id} refused without a reason")
            return await self._fail(tx, error, request)

        return await self._transaction(attempt)

    async def release(self, hold_id: uuid.UUID, *, key: str) -> HoldView:
        """Void a hold: its tokens become available again. Releasing a hold that already
        expired succeeds without a change (the tokens are free either way)."""
        self._check_key(key)

        async def attempt(tx: _Tx) -> HoldView | LedgerError:
            params = {"hold_id": hold_id, "key": key, "now": self._now()}
            row = await sql.fetchrow(tx.conn, sql.RELEASE, params)
            if row is not None:
                return HoldView(
                    hold_id=hold_id,
                    account_id=row["account_id"],
                    amount=row["amount"],
                    status=HoldStatus.RELEASED,
                    expires_at=row["expires_at"],
                )
            await tx.begin()
            hold = await self._hold_for_refusal(tx, hold_id)
            request = _Request(
                account_id=hold["account_id"],
                key=key,
                operation=LedgerOperation.RELEASE,
                amount=None,
                subject_id=hold_id,
            )
            prior = await self._prior(tx, request)
            if prior is not None:
                return _hold(hold)
            if hold["status"] == HoldStatus.EXPIRED.value:
                # Once, like any release: the partial unique index on resolved holds decides.
                released = await sql.fetch(tx.conn, sql.RECORD_RELEASE_OF_EXPIRED, params)
                if released:
                    return _hold(hold)
            return await self._fail(
                tx,
                HoldNotActive(
                    f"hold {hold_id} is {hold['status']}"
                    + (
                        " and was released already"
                        if hold["status"] == HoldStatus.EXPIRED.value
                        else ""
                    )
                    + "; it cannot be released"
                ),
                request,
            )

        return await self._transaction(attempt)

    async def hold(self, hold_id: uuid.UUID) -> HoldView:
        row = await self._read(sql.HOLD, {"hold_id": hold_id, "now": self._now()})
        if row is None:
            raise HoldNotActive(f"no hold {hold_id}")
        return _hold(row)

    async def alerts(self, account_id: uuid.UUID, *, open_only: bool = False) -> list[AlertView]:
        """Low-balance alerts of an account, newest first."""
        pool = await self._connections()
        async with pool.acquire() as conn:
            rows = await sql.fetch(
                conn,
                """
                SELECT id, account_id, tenant_id, threshold, status, balance_at_alert,
                       created_at, resolved_at
                FROM token_alerts
                WHERE account_id = CAST(:account_id AS uuid)
                  AND (status = 'open' OR NOT CAST(:open_only AS boolean))
                ORDER BY created_at DESC, threshold DESC
                """,
                {"account_id": account_id, "open_only": open_only},
            )
        return [
            AlertView(
                alert_id=row["id"],
                account_id=row["account_id"],
                tenant_id=row["tenant_id"],
                threshold=row["threshold"],
                status=row["status"],
                balance_at_alert=row["balance_at_alert"],
                created_at=row["created_at"],
                resolved_at=row["resolved_at"],
            )
            for row in rows
        ]

    async def expire_holds(self, *, batch_size: int = 1000) -> int:
        """Release every hold past its expiry (the scheduled sweep); returns how many."""
        total = 0
        while True:

            async def sweep(tx: _Tx) -> int:
                row = await sql.fetchrow(
                    tx.conn, sql.EXPIRE_ALL, {"batch_size": batch_size, "now": self._now()}
                )
                return int(row[0])

            count = await self._transaction(sweep)
            total += count
            if count < batch_size:
                break
        if total:
            log.info("token_holds_expired", count=total)
        return total


def _entry(row: Any) -> EntryView:
    return EntryView(
        transaction_id=row["id"],
        account_id=row["account_id"],
        kind=row["kind"],
        direction=row["direction"],
        amount=row["amount"],
        balance_after=row["balance_after"],
    )


def _hold(row: Any, *, status: HoldStatus | None = None) -> HoldView:
    return HoldView(
        hold_id=row["id"],
        account_id=row["account_id"],
        amount=row["amount"],
        status=status or HoldStatus(row["status"]),
        expires_at=row["expires_at"],
    )
