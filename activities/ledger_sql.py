"""The ledger's SQL: one statement per fast path, written with :name parameters and sent
through asyncpg as $n. Each write statement is a chain of CTEs that only proceeds when the
conditional UPDATE at its head matched, so a statement that returns no row changed nothing."""

import functools
import re
from typing import Any

import asyncpg

from models.billing import TIER_ALLOWANCES

# DB time unless the ledger was given a clock (tests drive expiry with one).
NOW = "coalesce(CAST(:now AS timestamptz), now())"

_THRESHOLDS = ", ".join(
    f"('{tier.value}', CAST({threshold} AS bigint))"
    for tier, allowance in TIER_ALLOWANCES.items()
    for threshold in allowance.low_balance_thresholds
)
# One alert per downward crossing: the row lock makes old = new + amount exact, and the partial
# unique index keeps a second open alert for the same threshold out.
_RAISE_ALERTS = f"""
alerts AS (
    INSERT INTO token_alerts
        (id, account_id, tenant_id, threshold, status, balance_at_alert, transaction_id, created_at)
    SELECT gen_random_uuid(), acct.id, acct.tenant_id, t.threshold, 'open', acct.balance,
           CAST(:tx_id AS uuid), {NOW}
    FROM acct JOIN (VALUES {_THRESHOLDS}) AS t(tier, threshold) ON t.tier = acct.plan_tier
    WHERE acct.balance < t.threshold AND acct.balance + CAST(:amount AS bigint) >= t.threshold
    ON CONFLICT (account_id, threshold) WHERE status = 'open' DO NOTHING
    RETURNING threshold
)"""
_RESOLVE_ALERTS = f"""
alerts AS (
    UPDATE token_alerts SET status = 'resolved', resolved_at = {NOW}
    FROM acct
    WHERE token_alerts.account_id = acct.id AND token_alerts.status = 'open'
      AND token_alerts.threshold <= acct.balance
    RETURNING token_alerts.threshold
)"""
_NO_PRIOR = """NOT EXISTS (
    SELECT 1 FROM token_ledger_requests
    WHERE account_id = CAST(:account_id AS uuid) AND idempotency_key = :key)"""


def _entry_sql(*, direction: str, conditional: bool) -> str:
    """Debit or credit the balance, append the entry and its idempotency record."""
    sign = "-" if direction == "debit" else "+"
    floor_check = "AND balance - held - CAST(:amount AS bigint) >= floor" if conditional else ""
    alerts = _RAISE_ALERTS if direction == "debit" else _RESOLVE_ALERTS
    return f"""
WITH acct AS (
    UPDATE token_accounts
    SET balance = balance {sign} CAST(:amount AS bigint),
        last_sequence = last_sequence + 1, updated_at = {NOW}
    WHERE id = CAST(:account_id AS uuid) {floor_check} AND {_NO_PRIOR}
    RETURNING id, tenant_id, plan_tier, balance, last_sequence
), entry AS (
    INSERT INTO token_transactions
        (id, account_id, tenant_id, direction, kind, amount, balance_after, sequence,
         idempotency_key, reverses_id, description, meta, created_at)
    SELECT CAST(:tx_id AS uuid), id, tenant_id, '{direction}', :kind, CAST(:amount AS bigint),
           balance, last_sequence, :key, CAST(:reverses_id AS uuid), :description,
           CAST('{{}}' AS json), {NOW}
    FROM acct
    RETURNING id
), request AS (
    INSERT INTO token_ledger_requests
        (account_id, idempotency_key, operation, amount, subject_id, outcome,
         transaction_id, result_balance, created_at)
    SELECT acct.id, :key, :operation, CAST(:amount AS bigint),
           CAST(:reverses_id AS uuid), 'succeeded', entry.id, acct.balance, {NOW}
    FROM acct, entry
), {alerts}
SELECT acct.tenant_id, acct.plan_tier, acct.balance,
       ARRAY(SELECT threshold FROM alerts) AS thresholds
FROM acct
"""


DEBIT = _entry_sql(direction="debit", conditional=True)
CREDIT = _entry_sql(direction="credit", conditional=False)

RESERVE = f"""
WITH acct AS (
    UPDATE token_accounts
    SET held = held + CAST(:amount AS bigint), updated_at = {NOW}
    WHERE id = CAST(:account_id AS uuid)
      AND balance - held - CAST(:amount AS bigint) >= floor AND {_NO_PRIOR}
    RETURNING id, tenant_id, balance
), hold AS (
    INSERT INTO token_holds
        (id, account_id, tenant_id, amount, status, idempotency_key, expires_at, description,
         created_at)
    SELECT CAST(:hold_id AS uuid), id, tenant_id, CAST(:amount AS bigint), 'active', :key,
           {NOW} + make_interval(secs => CAST(:ttl AS double precision)), :description, {NOW}
    FROM acct
    RETURNING id, expires_at
), request AS (
    INSERT INTO token_ledger_requests
        (account_id, idempotency_key, operation, amount, outcome, hold_id, result_balance,
         created_at)
    SELECT acct.id, :key, 'reserve', CAST(:amount AS bigint), 'succeeded',
           hold.id, acct.balance, {NOW}
    FROM acct, hold
)
SELECT hold.expires_at FROM hold
"""

_HOLD_KEY_FREE = """NOT EXISTS (
    SELECT 1 FROM token_ledger_requests r
    WHERE r.account_id = token_holds.account_id AND r.idempotency_key = :key)"""

# "Active", said so that the planner cannot use the partial indexes on status = 'active' (a
# check constraint keeps the two in step): with a generic plan it would scan a partial index,
# dead entries included, instead of fetching the hold by its primary key.
_UNRESOLVED = "resolved_at IS NULL"

SETTLE = f"""
WITH hold AS (
    UPDATE token_holds
    SET status = 'settled', settled_amount = CAST(:amount AS bigint), resolved_at = {NOW}
    WHERE id = CAST(:hold_id AS uuid) AND {_UNRESOLVED} AND expires_at > {NOW}
      AND amount >= CAST(:amount AS bigint) AND {_HOLD_KEY_FREE}
    RETURNING account_id, amount, expires_at
), acct AS (
    UPDATE token_accounts a
    SET balance = a.balance - CAST(:amount AS bigint), held = a.held - hold.amount,
        last_sequence = a.last_sequence + CASE WHEN CAST(:amount AS bigint) > 0 THEN 1 ELSE 0 END,
        updated_at = {NOW}
    FROM hold
    WHERE a.id = hold.account_id
    RETURNING a.id, a.tenant_id, a.plan_tier, a.balance, a.last_sequence
), entry AS (
    INSERT INTO token_transactions
        (id, account_id, tenant_id, direction, kind, amount, balance_after, sequence,
         idempotency_key, hold_id, description, meta, created_at)
    SELECT CAST(:tx_id AS uuid), id, tenant_id, 'debit', 'settlement', CAST(:amount AS bigint),
           balance, last_sequence, :key, CAST(:hold_id AS uuid), :description,
           CAST('{{}}' AS json), {NOW}
    FROM acct
    WHERE CAST(:amount AS bigint) > 0
    RETURNING id
), request AS (
    INSERT INTO token_ledger_requests
        (account_id, idempotency_key, operation, amount, subject_id, outcome, hold_id,
         transaction_id, result_balance, created_at)
    SELECT acct.id, :key, 'settle', CAST(:amount AS bigint),
           CAST(:hold_id AS uuid), 'succeeded', CAST(:hold_id AS uuid),
           (SELECT id FROM entry), acct.balance, {NOW}
    FROM acct
), {_RAISE_ALERTS}
SELECT acct.id AS account_id, acct.tenant_id, acct.plan_tier, acct.balance,
       hold.amount AS held, (SELECT id FROM entry) AS transaction_id,
       ARRAY(SELECT threshold FROM alerts) AS thresholds
FROM acct, hold
"""

RELEASE = f"""
WITH hold AS (
    UPDATE token_holds
    SET status = 'released', resolved_at = {NOW}
    WHERE id = CAST(:hold_id AS uuid) AND {_UNRESOLVED} AND {_HOLD_KEY_FREE}
    RETURNING account_id, amount, expires_at
), acct AS (
    UPDATE token_accounts a
    SET held = a.held - hold.amount, updated_at = {NOW}
    FROM hold
    WHERE a.id = hold.account_id
    RETURNING a.id, a.balance
), request AS (
    INSERT INTO token_ledger_requests
        (account_id, idempotency_key, operation, subject_id, outcome, hold_id,
         result_balance, created_at)
    SELECT acct.id, :key, 'release', CAST(:hold_id AS uuid), 'succeeded',
           CAST(:hold_id AS uuid), acct.balance, {NOW}
    FROM acct
)
SELECT acct.id AS account_id, hold.amount, hold.expires_at FROM acct, hold
"""

# Expiry releases what a hold kept aside; SKIP LOCKED lets several sweepers share the work.
_EXPIRE = f"""
WITH expired AS (
    UPDATE token_holds SET status = 'expired', resolved_at = {NOW}
    WHERE id IN (
        SELECT id FROM token_holds
        WHERE status = 'active' AND expires_at <= {NOW} {{account_filter}}
        ORDER BY expires_at
        LIMIT :batch_size
        FOR UPDATE SKIP LOCKED)
    RETURNING account_id, amount
), per_account AS (
    SELECT account_id, sum(amount) AS amount FROM expired GROUP BY account_id
), acct AS (
    UPDATE token_accounts a SET held = a.held - per_account.amount, updated_at = {NOW}
    FROM per_account WHERE a.id = per_account.account_id
    RETURNING a.id
)
SELECT count(*) FROM expired
"""
EXPIRE_ALL = _EXPIRE.replace("{account_filter}", "")
EXPIRE_ACCOUNT = _EXPIRE.replace("{account_filter}", "AND account_id = CAST(:account_id AS uuid)")

RECORD_RELEASE_OF_EXPIRED = f"""
INSERT INTO token_ledger_requests
    (account_id, idempotency_key, operation, subject_id, outcome, hold_id, created_at)
SELECT account_id, :key, 'release', id, 'succeeded', id, {NOW}
FROM token_holds h WHERE id = CAST(:hold_id AS uuid)
  AND NOT EXISTS (
      SELECT 1 FROM token_ledger_requests r
      WHERE r.hold_id = h.id AND r.outcome = 'succeeded'
        AND r.operation IN ('settle', 'release'))
RETURNING hold_id
"""

RECORD_FAILURE = f"""
INSERT INTO token_ledger_requests
    (account_id, idempotency_key, operation, amount, subject_id, outcome, error_type,
     error_message, created_at)
VALUES (CAST(:account_id AS uuid), :key, :operation, CAST(:amount AS bigint),
        CAST(:subject_id AS uuid), 'failed', :error_type, :error_message, {NOW})
"""

PRIOR = """
SELECT operation, amount, subject_id, outcome, error_type, error_message, transaction_id,
       hold_id, result_balance
FROM token_ledger_requests
WHERE account_id = CAST(:account_id AS uuid) AND idempotency_key = :key
"""

ENTRY = """
SELECT id, account_id, tenant_id, direction, kind, amount, balance_after, reverses_id
FROM token_transactions WHERE id = CAST(:id AS uuid)
"""

HOLD = f"""
SELECT h.id, h.account_id, h.amount, h.status, h.expires_at, h.settled_amount,
       h.expires_at <= {NOW} AS expired
FROM token_holds h WHERE h.id = CAST(:hold_id AS uuid)
"""


@functools.cache
def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """':name' parameters to asyncpg's '$n', once per statement."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"(?<![:\w]):([a-z_]+)", number, sql), tuple(names)


async def fetch(conn: asyncpg.Connection, sql: str, params: dict[str, Any]) -> list[Any]:
    query, names = positional(sql)
    return await conn.fetch(query, *(params[name] for name in names))


async def fetchrow(conn: asyncpg.Connection, sql: str, params: dict[str, Any]) -> Any:
    query, names = positional(sql)
    return await conn.fetchrow(query, *(params[name] for name in names))
