"""A tenant's sales report, computed in SQL from its Order and Customer rows, in the shop's
time zone. Every query is filtered by the tenant: a report never reads another's rows.

Definitions (amounts in the shop's currency): cancelled orders and test orders are not sales.
gross = what orders were placed for (total price with shipping and taxes, discounts already
deducted), on the day placed; refunds count on the day each refund was made, as Shopify's own
reports do (an imported order's `refunded`, which has no date, on the order's day); a day's
net = its gross - its refunds. Sales by channel and top customers are the period's orders net
of their refunds to date. An order is a new customer's when it is that customer's first
order ever (orders without a customer count as new). The repeat-purchase rate is the share of
the period's customers who have two or more orders up to the period's end.
"""

import csv
import io
import uuid
import zoneinfo
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from temporalio import activity

from models.db import SessionFactory
from models.projects import Connector, ConnectorKind
from workflows.contracts.commerce import (
    ChannelSales,
    CustomerAverage,
    DailyRevenue,
    Report,
    ReportInput,
    TopCustomer,
)
from workflows.contracts.errors import ErrorType, refused

# A sale: the tenant's order, neither cancelled nor a test.
_SALE = "o.tenant_id = :tenant AND o.status <> 'cancelled' AND NOT o.test"


def _within(moment: str) -> str:
    """[first_day 00:00, last_day + 1 00:00) in the shop's zone, as timestamptz bounds."""
    return f"""
  {moment} >= (CAST(:first_day AS date)::timestamp AT TIME ZONE :tz)
  AND {moment} < ((CAST(:last_day AS date) + 1)::timestamp AT TIME ZONE :tz)"""


_PERIOD = f"{_SALE} AND {_within('o.placed_at')}"

DAILY = f"""
WITH sales AS (
  SELECT (o.placed_at AT TIME ZONE :tz)::date AS day, o.currency, count(*) AS orders,
         sum(o.total_cents) AS gross, sum(o.discount_cents) AS discounts
  FROM orders o WHERE {_PERIOD} GROUP BY 1, 2
), refunds AS (
  SELECT (CAST(r ->> 'at' AS timestamptz) AT TIME ZONE :tz)::date AS day, o.currency,
         CAST(r ->> 'cents' AS bigint) AS cents
  FROM orders o CROSS JOIN LATERAL json_array_elements(o.refunds) AS r
  WHERE {_SALE} AND {_within("CAST(r ->> 'at' AS timestamptz)")}
  UNION ALL
  SELECT (o.placed_at AT TIME ZONE :tz)::date, o.currency, o.refunded_cents
  FROM orders o WHERE {_PERIOD} AND json_array_length(o.refunds) = 0 AND o.refunded_cents > 0
), refunded AS (SELECT day, currency, sum(cents) AS refunds FROM refunds GROUP BY 1, 2)
SELECT day, currency, coalesce(s.orders, 0) AS orders, coalesce(s.gross, 0) AS gross,
       coalesce(s.discounts, 0) AS discounts, coalesce(r.refunds, 0) AS refunds,
       coalesce(s.gross, 0) - coalesce(r.refunds, 0) AS net
FROM sales s FULL JOIN refunded r USING (day, currency)
ORDER BY day, currency
"""

BY_CHANNEL = f"""
SELECT coalesce(nullif(o.channel, ''), o.source) AS channel, o.currency, count(*) AS orders,
       sum(o.net_cents) AS net
FROM orders o WHERE {_PERIOD}
GROUP BY 1, o.currency ORDER BY net DESC, channel
"""

AVERAGES = f"""
WITH ranked AS (
  SELECT o.id, row_number() OVER (
           PARTITION BY coalesce(o.customer_id, o.id) ORDER BY o.placed_at, o.id) AS nth
  FROM orders o WHERE {_SALE}
)
SELECT o.currency,
       count(*) FILTER (WHERE r.nth = 1) AS new_orders,
       coalesce(avg(o.total_cents) FILTER (WHERE r.nth = 1), 0) AS new_aov,
       count(*) FILTER (WHERE r.nth > 1) AS returning_orders,
       coalesce(avg(o.total_cents) FILTER (WHERE r.nth > 1), 0) AS returning_aov
FROM orders o JOIN ranked r ON r.id = o.id WHERE {_PERIOD}
GROUP BY o.currency ORDER BY o.currency
"""

TOP_CUSTOMERS = f"""
SELECT c.id, c.name, c.email, o.currency, count(*) AS orders, sum(o.net_cents) AS net
FROM orders o JOIN customers c ON c.id = o.customer_id AND c.tenant_id = o.tenant_id
WHERE {_PERIOD}
GROUP BY c.id, c.name, c.email, o.currency ORDER BY net DESC, c.id LIMIT :top
"""

REPEAT = f"""
WITH buyers AS (SELECT DISTINCT o.customer_id FROM orders o
                WHERE {_PERIOD} AND o.customer_id IS NOT NULL)
SELECT count(*) AS customers,
       count(*) FILTER (WHERE (
         SELECT count(*) FROM orders p
         WHERE p.tenant_id = :tenant AND p.customer_id = b.customer_id AND p.status <> 'cancelled'
           AND NOT p.test
           AND p.placed_at < ((CAST(:last_day AS date) + 1)::timestamp AT TIME ZONE :tz)) >= 2
       ) AS repeaters
FROM buyers b
"""


class ReportActivities:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    @activity.defn
    async def compute_report(self, request: ReportInput) -> Report:
        async with self._sessions() as session:
            tz = request.timezone or await self._shop_timezone(session, request.tenant_id)
            try:
                zone = zoneinfo.ZoneInfo(tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise refused(
                    ErrorType.INVALID_REPORT_PERIOD, f"unknown time zone {tz!r}"
                ) from None
            first, last = request.first_day, request.last_day
            if (first is None or last is None) and request.as_of is not None:
                yesterday = (request.as_of.astimezone(zone) - timedelta(days=1)).date()
                first, last = first or yesterday, last or yesterday
            if first is None or last is None or first > last:
                raise refused(
                    ErrorType.INVALID_REPORT_PERIOD,
                    f"a report period runs forward: {first}..{last}",
                )
            params: dict[str, Any] = {
                "tenant": request.tenant_id,
                "first_day": first,
                "last_day": last,
                "tz": tz,
                "top": request.top_customers,
            }

            async def rows(sql: str) -> list[Any]:
                return list(
                    (await (await session.connection()).execute(sa.text(sql), params)).all()
                )

            daily = [
                DailyRevenue(
                    day=r.day,
                    currency=r.currency,
                    orders=r.orders,
                    gross_cents=r.gross,
                    discount_cents=r.discounts,
                    refunded_cents=r.refunds,
                    net_cents=r.net,
                )
                for r in await rows(DAILY)
            ]
            channels = [
                ChannelSales(
                    channel=r.channel, currency=r.currency, orders=r.orders, net_cents=r.net
                )
                for r in await rows(BY_CHANNEL)
            ]
            averages = [
                CustomerAverage(
                    currency=r.currency,
                    new_customer_orders=r.new_orders,
                    new_customer_aov_cents=round(r.new_aov),
                    returning_customer_orders=r.returning_orders,
                    returning_customer_aov_cents=round(r.returning_aov),
                )
                for r in await rows(AVERAGES)
            ]
            top = [
                TopCustomer(
                    customer_id=r.id,
                    name=r.name,
                    email=r.email,
                    currency=r.currency,
                    orders=r.orders,
                    net_cents=r.net,
                )
                for r in await rows(TOP_CUSTOMERS)
            ]
            repeat = (await rows(REPEAT))[0]
        return Report(
            tenant_id=request.tenant_id,
            first_day=first,
            last_day=last,
            timezone=tz,
            daily=daily,
            by_channel=channels,
            average_order_value=averages,
            top_customers=top,
            repeat_purchase_rate=(repeat.repeaters / repeat.customers) if repeat.customers else 0.0,
            customers=repeat.customers,
        )

    async def _shop_timezone(self, session: Any, tenant_id: uuid.UUID) -> str:
        connector = (
            await session.exec(
                select(Connector)
                .where(Connector.tenant_id == tenant_id, Connector.kind == ConnectorKind.SHOPIFY)
                .order_by(col(Connector.created_at))
            )
        ).first()
        return str((connector.config if connector else {}).get("timezone") or "UTC")


def daily_revenue_csv(report: Report) -> str:
    """The report's daily revenue as CSV (amounts in minor units of the currency)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["day", "currency", "orders", "gross", "discounts", "refunds", "net"])
    for d in report.daily:
        writer.writerow(
            [
                d.day.isoformat(),
                d.currency,
                d.orders,
                d.gross_cents,
                d.discount_cents,
                d.refunded_cents,
                d.net_cents,
            ]
        )
    return out.getvalue()
