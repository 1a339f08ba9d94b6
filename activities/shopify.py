"""The Shopify Admin GraphQL client the connectors use: one POST per query to
/admin/api/<version>/graphql.json with X-Shopify-Access-Token, cursor pagination, and Shopify's
rate limits honoured, never treated as failures.

Rate limits: every response's `extensions.cost.throttleStatus` says how full the leaky bucket
is; before a call the bucket cannot cover, the client waits (cost - available) / restoreRate.
A THROTTLED error (HTTP 200 or 429) and a Retry-After header make it wait and ask again.

The API version (SHOPIFY_API_VERSION) is one Shopify supports in December 2026: versions are
released quarterly and each is supported for 12 months; a request for a version out of support
is served by the oldest supported one, and every response names the version that served it in
`X-Shopify-API-Version` (https://shopify.dev/docs/api/usage/versioning). The client reads it
and warns when it differs from the one asked for.

Protected customer data: an app without access gets `null` for the protected fields with an
`ACCESS_DENIED` entry per field in `errors` (partial data, HTTP 200). Those fields are recorded
as withheld and the rest of the answer is used; any other error still fails the query.
"""

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import structlog
from iso4217 import Currency
from prometheus_client import Counter

from workflows.contracts.errors import ErrorType

log = structlog.get_logger(__name__)

# https://shopify.dev/docs/api/admin-graphql/2026-10 (released October 2026, supported until
# October 2027).
SHOPIFY_API_VERSION = "2026-10"
API_VERSION_HEADER = "X-Shopify-API-Version"
VERSION_MISMATCHES = Counter(
    "changeflow_shopify_api_version_mismatch_total",
    "Shopify answers served by another API version than the one asked for",
    ["asked", "served"],
)
ACCESS_DENIED = "ACCESS_DENIED"

# Nodes per page: Shopify caps `first` at 250 and a query's requested cost at 1000 points
# (an object costs 1, a connection 2 + first x its node's cost: an order with its four money
# bags of 3, its refunds, its customer of 3 and 10 line items of 4 is 62, so 15 cost 932).
PAGE_SIZE = {"customers": 250, "orders": 15}
# Line items read with each order; an order with more has the rest read by the order's id.
LINE_ITEMS_FIRST = 10
LINE_ITEMS_PAGE = 200  # 3 + 200 x 4 points: under the 1000-point query limit
# A throttle longer than this is a shop in trouble, not a rate limit: the activity fails and
# Temporal retries it later.
MAX_THROTTLE_WAIT_SECONDS = 600.0
WAIT_SLICE_SECONDS = 5.0


class ShopifyError(Exception):
    error_type: ErrorType = ErrorType.SOURCE_PROTOCOL_ERROR


class ShopifyAuthError(ShopifyError):
    """The shop refused the token (401/403): the connector's credentials are wrong."""

    error_type = ErrorType.INVALID_CREDENTIALS


class ShopifyNotFound(ShopifyError):
    """No shop at the configured address."""

    error_type = ErrorType.INVALID_CONNECTOR_CONFIG


class ShopifyUnavailable(Exception):
    """A transient failure (5xx, network, a throttle that will not end): retry later."""


@functools.lru_cache(maxsize=1024)
def iso_currency_exponent(code: str) -> int | None:
    """Digits of the currency's minor unit by ISO 4217 (JPY 0, USD 2, BHD 3); None for a code
    that is not an ISO 4217 currency of money (XYZ, or XAU and XXX, which have no minor unit)."""
    try:
        return Currency(code.upper()).exponent
    except ValueError:
        return None


def currency_exponent(currency: str) -> int:
    """Digits after the decimal point of the currency's minor unit (JPY has none)."""
    exponent = iso_currency_exponent(currency)
    return 2 if exponent is None else exponent


@functools.lru_cache(maxsize=1024)
def _scale(currency: str) -> Decimal:
    """10 ** the currency's exponent (a sync converts hundreds of thousands of amounts)."""
    return Decimal(10 ** currency_exponent(currency))


def minor_units(amount: str | None, currency: str) -> int:
    if amount is None:
        return 0
    return int((Decimal(amount) * _scale(currency)).to_integral_value())


def format_money(minor: int, currency: str) -> str:
    """An amount in minor units as people write it: 1,234.50 USD, 1,200 JPY."""
    exponent = currency_exponent(currency)
    return f"{minor / 10**exponent:,.{exponent}f} {currency}"


def _search_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def window_query(start: datetime, end: datetime) -> str:
    """Shopify's search syntax for start <= updated_at < end (quoted ISO 8601, UTC)."""
    return f"updated_at:>='{_search_time(start)}' AND updated_at:<'{_search_time(end)}'"


@dataclass
class Bucket:
    """The client's view of the shop's leaky bucket, from the last response."""

    maximum: float = 1000.0
    available: float = 1000.0
    restore_rate: float = 50.0
    seen_at: float = 0.0
    costs: dict[str, float] = field(default_factory=dict)

    def available_at(self, now: float) -> float:
        return min(self.maximum, self.available + self.restore_rate * (now - self.seen_at))

    def wait_for(self, cost: float, now: float) -> float:
        missing = min(cost, self.maximum) - self.available_at(now)
        return max(0.0, missing / self.restore_rate) if self.restore_rate > 0 else 0.0


Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Page:
    nodes: list[dict[str, Any]]
    end_cursor: str | None
    has_next: bool


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in_seconds: int


async def client_credentials_token(
    http: httpx.AsyncClient, *, shop_url: str, client_id: str, client_secret: str
) -> IssuedToken:
    """An access token by the client-credentials grant (an app of the shop's own organization):
    `POST /admin/oauth/access_token`; Shopify's answer carries `expires_in` (24 h)."""
    url = f"{shop_url.rstrip('/')}/admin/oauth/access_token"
    try:
        response = await http.post(
            url,
            json={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            },
        )
    except httpx.TransportError as err:
        raise ShopifyUnavailable(f"cannot reach the shop: {type(err).__name__}") from None
    if response.status_code in (400, 401, 403):
        raise ShopifyAuthError(
            f"the shop refused the app's client credentials (HTTP {response.status_code}); "
            "check the client id and secret of the app and that it is installed on the shop"
        )
    if response.status_code >= 500 or response.status_code == 429:
        raise ShopifyUnavailable(f"the shop answered HTTP {response.status_code}")
    try:
        body = response.json()
        return IssuedToken(str(body["access_token"]), int(body.get("expires_in") or 0))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ShopifyError(
            f"the shop's token answer is not a token (HTTP {response.status_code})"
        ) from None


class ShopifyClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        shop_url: str,
        access_token: str,
        api_version: str,
        bucket: Bucket | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_wait: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._http = http
        self._url = f"{shop_url.rstrip('/')}/admin/api/{api_version}/graphql.json"
        self.api_version = api_version
        # The version that served the last answer (X-Shopify-API-Version), when one said.
        self.served_version: str | None = None
        # Fields the shop withheld (protected customer data), by their path without indexes:
        # "orders.nodes.customer.defaultEmailAddress".
        self.withheld: set[str] = set()
        self._token = access_token
        self._sleep = sleep
        self._clock = clock
        self._on_wait = on_wait
        # Shared by the clients of one shop in a process: the next call knows the last state.
        self.bucket = bucket or Bucket(seen_at=clock())
        self.waited_seconds = 0.0

    async def _wait(self, seconds: float, waited: float) -> float:
        if waited + seconds > MAX_THROTTLE_WAIT_SECONDS:
            raise ShopifyUnavailable(f"the shop stayed throttled for over {waited:.0f}s")
        self.waited_seconds += seconds
        left = seconds
        # In slices, each announced (the activity heartbeats), so a long wait stays alive.
        while left > 0:
            step = min(left, WAIT_SLICE_SECONDS)
            self._on_wait(left)
            await self._sleep(step)
            left -= step
        return waited + seconds

    async def query(self, name: str, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        """The `data` of one GraphQL query, waiting out the shop's rate limit."""
        waited = 0.0
        while True:
            # A query of unknown cost waits for a full bucket, so it is never refused.
            cost = self.bucket.costs.get(name, self.bucket.maximum)
            pause = self.bucket.wait_for(cost, self._clock())
            if pause > 0:
                waited = await self._wait(pause, waited)
            try:
                response = await self._http.post(
                    self._url,
                    headers={"X-Shopify-Access-Token": self._token},
                    json={"query": document, "variables": variables},
                )
            except httpx.TransportError as err:
                raise ShopifyUnavailable(f"cannot reach the shop: {type(err).__name__}") from None
            if response.status_code == 429:
                retry_after = float(response.headers.get("Retry-After", "1") or 1)
                waited = await self._wait(retry_after, waited)
                continue
            if response.status_code in (401, 403):
                raise ShopifyAuthError(
                    f"the shop refused the access token (HTTP {response.status_code}); "
                    "check the token and its scopes (read_orders, read_customers)"
                )
            if response.status_code == 404:
                raise ShopifyNotFound(f"no Shopify Admin API at {self._url} (HTTP 404)")
            if response.status_code >= 500:
                raise ShopifyUnavailable(f"the shop answered HTTP {response.status_code}")
            if response.status_code != 200:
                raise ShopifyError(f"the shop answered HTTP {response.status_code}")
            self._read_version(response)
            try:
                body = response.json()
            except json.JSONDecodeError:
                raise ShopifyError("the shop's answer is not JSON") from None
            throttled = self._read_cost(name, body)
            errors = body.get("errors") or []
            if any(_code(e) == "THROTTLED" for e in errors):
                waited = await self._wait(max(throttled, 0.5), waited)
                continue
            denied = [e for e in errors if _code(e) == ACCESS_DENIED and e.get("path")]
            self.withheld.update(_field_path(e["path"]) for e in denied)
            errors = [e for e in errors if e not in denied]
            if errors:
                messages = "; ".join(str(e.get("message", e)) for e in errors)[:500]
                raise ShopifyError(f"the shop refused the query {name}: {messages}")
            data = body.get("data")
            if not isinstance(data, dict):
                raise ShopifyError(f"the shop's answer to {name} has no data")
            return data

    def _read_version(self, response: httpx.Response) -> None:
        served = response.headers.get(API_VERSION_HEADER)
        if not served:
            return
        if served != self.api_version and served != self.served_version:
            VERSION_MISMATCHES.labels(asked=self.api_version, served=served).inc()
            log.warning(
                "shopify_api_version_mismatch",
                asked=self.api_version,
                served=served,
                hint="the version asked for is not supported: set CHANGEFLOW_SHOPIFY_API_VERSION",
            )
        self.served_version = served

    def _read_cost(self, name: str, body: dict[str, Any]) -> float:
        """Update the bucket from `extensions.cost`; the wait a throttled call needs."""
        cost = (body.get("extensions") or {}).get("cost") or {}
        status = cost.get("throttleStatus")
        if not status:
            return 1.0
        self.bucket.maximum = float(status["maximumAvailable"])
        self.bucket.available = float(status["currentlyAvailable"])
        self.bucket.restore_rate = float(status["restoreRate"]) or self.bucket.restore_rate
        self.bucket.seen_at = self._clock()
        requested = float(cost.get("requestedQueryCost") or self.bucket.maximum)
        self.bucket.costs[name] = requested
        return self.bucket.wait_for(requested, self.bucket.seen_at)

    async def shop(self) -> dict[str, Any]:
        data = await self.query("shop", SHOP_QUERY, {})
        return dict(data["shop"])

    async def pages(
        self, stream: str, start: datetime, end: datetime, after: str | None = None
    ) -> AsyncIterator[Page]:
        """Every node of `stream` with start <= updated_at < end, oldest update first, from
        the page after `after` (a cursor of the same query) when given."""
        document = STREAM_QUERIES[stream]
        while True:
            data = await self.query(
                stream,
                document,
                {"first": PAGE_SIZE[stream], "after": after, "query": window_query(start, end)},
            )
            connection = data[stream]
            if connection is None:  # the whole stream withheld (ACCESS_DENIED, recorded)
                return
            nodes = list(connection["nodes"])
            if stream == "orders":
                for node in nodes:
                    await self._all_line_items(node)
            info = connection["pageInfo"]
            yield Page(nodes, info["endCursor"], bool(info["hasNextPage"]))
            if not info["hasNextPage"]:
                return
            after = info["endCursor"]

    async def _all_line_items(self, order: dict[str, Any]) -> None:
        """Complete an order's line items past the first page, in place."""
        items = order.get("lineItems") or {}
        info = items.get("pageInfo") or {}
        while info.get("hasNextPage"):
            data = await self.query(
                "order_line_items",
                ORDER_LINE_ITEMS_QUERY,
                {"id": order["id"], "first": LINE_ITEMS_PAGE, "after": info["endCursor"]},
            )
            more = (data.get("order") or {}).get("lineItems") or {}
            items["nodes"] = [*items.get("nodes", []), *more.get("nodes", [])]
            info = more.get("pageInfo") or {}

    async def webhook_subscriptions(self) -> dict[str, str]:
        """The app's webhook subscriptions on the shop: topic -> uri."""
        data = await self.query("webhook_subscriptions", WEBHOOK_SUBSCRIPTIONS_QUERY, {})
        return {n["topic"]: n["uri"] for n in data["webhookSubscriptions"]["nodes"]}

    async def subscribe(self, topic: str, uri: str) -> None:
        """webhookSubscriptionCreate for one topic (JSON deliveries to `uri`)."""
        data = await self.query(
            "webhook_subscription_create",
            WEBHOOK_SUBSCRIPTION_CREATE,
            {"topic": topic, "webhookSubscription": {"uri": uri, "format": "JSON"}},
        )
        errors = data["webhookSubscriptionCreate"]["userErrors"]
        if errors:
            messages = "; ".join(str(e.get("message")) for e in errors)
            raise ShopifyError(f"the shop refused the webhook subscription {topic}: {messages}")

    async def run_bulk_query(self, document: str) -> str:
        """Start a Bulk Operation (bulkOperationRunQuery): Shopify runs the query in the
        background, not against the rate limit; its id."""
        data = await self.query("bulk_run", BULK_RUN_QUERY, {"query": document})
        run = data["bulkOperationRunQuery"]
        if run["userErrors"]:
            messages = "; ".join(str(e.get("message")) for e in run["userErrors"])
            raise ShopifyError(f"the shop refused the bulk operation: {messages}")
        return str(run["bulkOperation"]["id"])

    async def current_bulk_operation(self) -> dict[str, Any]:
        """The app's latest bulk query operation (currentBulkOperation): status, url, ..."""
        data = await self.query("bulk_current", CURRENT_BULK_QUERY, {})
        return dict(data["currentBulkOperation"] or {})

    async def bulk_lines(self, url: str) -> AsyncIterator[dict[str, Any]]:
        """The operation's JSONL result, streamed a line at a time (it may be gigabytes)."""
        try:
            async with self._http.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ShopifyUnavailable(f"the bulk result answered {response.status_code}")
                # Bytes split at newlines (JSONL's only separator), parsed as they come.
                rest = b""
                async for chunk in response.aiter_bytes():
                    lines = (rest + chunk).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
                if rest.strip():
                    yield json.loads(rest)
        except httpx.TransportError as err:
            raise ShopifyUnavailable(f"cannot read the bulk result: {type(err).__name__}") from None

    async def count(self, stream: str, start: datetime, end: datetime, limit: int) -> int:
        """How many records of `stream` were updated in [start, end), counted up to `limit`
        (ordersCount / customersCount: one point, however many there are)."""
        data = await self.query(
            f"{stream}_count",
            COUNT_QUERIES[stream],
            {"query": window_query(start, end), "limit": limit},
        )
        return int((data.get(f"{stream}Count") or {}).get("count") or 0)

    async def next_update(self, stream: str, at: datetime) -> datetime | None:
        """When the first record of `stream` updated at or after `at` was updated; None when
        there is none. One call of minimal cost, so a sync steps over quiet stretches."""
        data = await self.query(
            f"{stream}_next",
            NEXT_UPDATE_QUERIES[stream],
            {"first": 1, "query": f"updated_at:>='{_search_time(at)}'"},
        )
        nodes = data[stream]["nodes"]
        if not nodes:
            return None
        return datetime.fromisoformat(str(nodes[0]["updatedAt"]).replace("Z", "+00:00"))


def _code(error: dict[str, Any]) -> Any:
    return (error.get("extensions") or {}).get("code")


def _field_path(path: list[Any]) -> str:
    return ".".join(str(p) for p in path if not isinstance(p, int))


SHOP_QUERY = "query Shop { shop { name myshopifyDomain ianaTimezone currencyCode } }"

# A MoneyBag: shopMoney is always in the shop's currency, presentmentMoney in the order's own.
_MONEY = "shopMoney { amount currencyCode } presentmentMoney { amount currencyCode }"
# Customer.email and .phone are deprecated since 2025-04 for these.
_CUSTOMER = (
    "id firstName lastName updatedAt defaultEmailAddress { emailAddress } "
    "defaultPhoneNumber { phoneNumber }"
)
_LINE_ITEM = f"id title sku quantity originalUnitPriceSet {{ {_MONEY} }}"

ORDERS_QUERY = f"""
query Orders($first: Int!, $after: String, $query: String) {{
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{
      id name createdAt processedAt updatedAt cancelledAt sourceName test
      currencyCode presentmentCurrencyCode
      displayFinancialStatus displayFulfillmentStatus
      subtotalPriceSet {{ {_MONEY} }}
      totalDiscountsSet {{ {_MONEY} }}
      totalRefundedSet {{ {_MONEY} }}
      totalPriceSet {{ {_MONEY} }}
      refunds {{ createdAt totalRefundedSet {{ {_MONEY} }} }}
      customer {{ {_CUSTOMER} }}
      lineItems(first: {LINE_ITEMS_FIRST}) {{
        pageInfo {{ hasNextPage endCursor }}
        nodes {{ {_LINE_ITEM} }}
      }}
    }}
  }}
}}
"""

CUSTOMERS_QUERY = f"""
query Customers($first: Int!, $after: String, $query: String) {{
  customers(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{ {_CUSTOMER} }}
  }}
}}
"""

ORDER_LINE_ITEMS_QUERY = f"""
query OrderLineItems($id: ID!, $first: Int!, $after: String) {{
  order(id: $id) {{
    lineItems(first: $first, after: $after) {{
      pageInfo {{ hasNextPage endCursor }}
      nodes {{ {_LINE_ITEM} }}
    }}
  }}
}}
"""

STREAM_QUERIES = {"orders": ORDERS_QUERY, "customers": CUSTOMERS_QUERY}

NEXT_UPDATE_QUERIES = {
    stream: f"""
query Next($first: Int!, $query: String) {{
  {stream}(first: $first, query: $query, sortKey: UPDATED_AT) {{ nodes {{ updatedAt }} }}
}}
"""
    for stream in STREAM_QUERIES
}

COUNT_QUERIES = {
    stream: f"""
query Count($query: String, $limit: Int) {{
  {stream}Count(query: $query, limit: $limit) {{ count precision }}
}}
"""
    for stream in STREAM_QUERIES
}

WEBHOOK_SUBSCRIPTIONS_QUERY = """
query WebhookSubscriptions {
  webhookSubscriptions(first: 100) { nodes { id topic uri } }
}
"""

WEBHOOK_SUBSCRIPTION_CREATE = """
mutation WebhookSubscriptionCreate(
  $topic: WebhookSubscriptionTopic!, $webhookSubscription: WebhookSubscriptionInput!
) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $webhookSubscription) {
    webhookSubscription { id topic uri }
    userErrors { field message }
  }
}
"""

BULK_RUN_QUERY = """
mutation BulkRun($query: String!) {
  bulkOperationRunQuery(query: $query) {
    bulkOperation { id status }
    userErrors { field message }
  }
}
"""

CURRENT_BULK_QUERY = """
query CurrentBulk {
  currentBulkOperation(type: QUERY) { id status errorCode createdAt objectCount url }
}
"""


def bulk_query(stream: str, start: datetime, end: datetime) -> str:
    """The Bulk Operation query of a stream's records updated in [start, end)."""
    if stream == "customers":
        return f"""
{{
  customers(query: "{window_query(start, end)}", sortKey: UPDATED_AT) {{
    edges {{ node {{ {_CUSTOMER} }} }}
  }}
}}
"""
    return bulk_orders_query(start, end)


def bulk_orders_query(start: datetime, end: datetime) -> str:
    """The orders of [start, end) for a Bulk Operation: the same fields as ORDERS_QUERY, every
    line item (a nested connection: its nodes are lines of their own with `__parentId`)."""
    return f"""
{{
  orders(query: "{window_query(start, end)}", sortKey: UPDATED_AT) {{
    edges {{ node {{
      id name createdAt processedAt updatedAt cancelledAt sourceName test
      currencyCode presentmentCurrencyCode
      displayFinancialStatus displayFulfillmentStatus
      subtotalPriceSet {{ {_MONEY} }}
      totalDiscountsSet {{ {_MONEY} }}
      totalRefundedSet {{ {_MONEY} }}
      totalPriceSet {{ {_MONEY} }}
      refunds {{ createdAt totalRefundedSet {{ {_MONEY} }} }}
      customer {{ {_CUSTOMER} }}
      lineItems {{ edges {{ node {{ {_LINE_ITEM} }} }} }}
    }} }}
  }}
}}
"""
