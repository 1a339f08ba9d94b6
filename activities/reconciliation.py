"""Ledger reconciliation: prove, account by account, that the cached numbers follow from the
immutable entries and that every hold ended at most once, in time."""

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from models.db import SessionFactory


@dataclass
class AccountReconciliation:
    account_id: uuid.UUID
    tenant_id: uuid.UUID
    plan_tier: str
    balance: int
    held: int
    entries: int
    drift: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.drift


# Each query yields (account_id, finding) rows; a clean ledger yields none.
_CHECKS: dict[str, str] = {
    "balance": """
        SELECT a.id, format('cached balance %s != sum of entries %s', a.balance, s.total)
        FROM token_accounts a
        CROSS JOIN LATERAL (
            SELECT COALESCE(sum(CASE WHEN t.direction = 'credit' THEN t.amount
                                     ELSE -t.amount END), 0) AS total
            FROM token_transactions t WHERE t.account_id = a.id) s
        WHERE a.balance <> s.total
    """,
    "chain": """
        SELECT account_id,
               format('entry #%s (%s): balance_after %s, expected %s', sequence, id,
                      balance_after, expected)
        FROM (
            SELECT t.account_id, t.id, t.sequence, t.balance_after,
                   COALESCE(lag(t.balance_after) OVER w, 0)
                     + CASE WHEN t.direction = 'credit' THEN t.amount ELSE -t.amount END
                     AS expected
            FROM token_transactions t
            WINDOW w AS (PARTITION BY t.account_id ORDER BY t.sequence)) e
        WHERE balance_after <> expected
    """,
    "sequence": """
        SELECT a.id, format('entries numbered up to %s but %s exist, last_sequence %s',
                            s.top, s.n, a.last_sequence)
        FROM token_accounts a
        CROSS JOIN LATERAL (
            SELECT count(*) AS n, COALESCE(max(sequence), 0) AS top
            FROM token_transactions t WHERE t.account_id = a.id) s
        WHERE s.n <> s.top OR a.last_sequence <> s.n
    """,
    "held": """
        SELECT a.id, format('cached held %s != sum of active holds %s', a.held, s.total)
        FROM token_accounts a
        CROSS JOIN LATERAL (
            SELECT COALESCE(sum(h.amount), 0) AS total
            FROM token_holds h WHERE h.account_id = a.id AND h.status = 'active') s
        WHERE a.held <> s.total
    """,
    "hold_settlement": """
        SELECT h.account_id,
               format('hold %s (%s, settled %s) has %s settlement entries totalling %s',
                      h.id, h.status, h.settled_amount, count(t.id), COALESCE(sum(t.amount), 0))
        FROM token_holds h
        LEFT JOIN token_transactions t ON t.hold_id = h.id
        GROUP BY h.id
        HAVING count(t.id) > 1
            OR (h.status <> 'settled' AND count(t.id) > 0)
            OR (h.status = 'settled' AND COALESCE(sum(t.amount), 0) <> h.settled_amount)
    """,
    "hold_resolved_once": """
        SELECT h.account_id,
               format('hold %s (%s) was settled or released by %s requests', h.id, h.status,
                      count(*))
        FROM token_holds h
        JOIN token_ledger_requests r
          ON r.hold_id = h.id AND r.outcome = 'succeeded'
         AND r.operation IN ('settle', 'release')
        GROUP BY h.id
        HAVING count(*) FILTER (WHERE r.operation = 'settle') > 1
            OR count(*) FILTER (WHERE r.operation = 'release') > 1
            OR (count(*) FILTER (WHERE r.operation = 'settle') > 0
                AND count(*) FILTER (WHERE r.operation = 'release') > 0)
    """,
    "hold_expiry": """
        SELECT account_id, format('hold %s expired at %s and is still active', id, expires_at)
        FROM token_holds
        WHERE status = 'active' AND expires_at < CAST(:deadline AS timestamptz)
    """,
    "refund": """
        SELECT r.account_id,
               format('refund %s of %s: %s', r.id, r.reverses_id,
                      CASE WHEN o.id IS NULL THEN 'original missing'
                           WHEN o.account_id <> r.account_id THEN 'original on another account'
                           WHEN r.amount <> o.amount THEN 'amount differs from original'
                           ELSE 'original is not a debit' END)
        FROM token_transactions r
        LEFT JOIN token_transactions o ON o.id = r.reverses_id
        WHERE r.reverses_id IS NOT NULL
          AND (o.id IS NULL OR o.account_id <> r.account_id OR r.amount <> o.amount
               OR o.direction <> 'debit' OR r.direction <> 'credit')
    """,
}


async def reconcile(
    sessions: SessionFactory,
    *,
    now: datetime | None = None,
    expiry_grace: timedelta = timedelta(0),
) -> list[AccountReconciliation]:
    """One report per account. `expiry_grace` tolerates holds the sweep has not reached yet
    (the sweep runs on a schedule); reports with drift say what and where."""
    deadline = (now or datetime.now(UTC)) - expiry_grace
    findings: dict[uuid.UUID, list[str]] = defaultdict(list)
    async with sessions() as session:
        conn = await session.connection()
        # One snapshot for every check, so concurrent writes cannot fake a mismatch.
        await conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for check, query in _CHECKS.items():
            for account_id, finding in await conn.execute(text(query), {"deadline": deadline}):
                findings[account_id].append(f"{check}: {finding}")
        accounts = await conn.execute(
            text(
                """
                SELECT a.id, a.tenant_id, a.plan_tier, a.balance, a.held,
                       (SELECT count(*) FROM token_transactions t WHERE t.account_id = a.id)
                FROM token_accounts a ORDER BY a.created_at, a.id
                """
            )
        )
        reports = [
            AccountReconciliation(
                account_id=row[0],
                tenant_id=row[1],
                plan_tier=row[2],
                balance=row[3],
                held=row[4],
                entries=row[5],
                drift=findings.get(row[0], []),
            )
            for row in accounts
        ]
    return reports
