"""A local Shopify for tests and benchmarks (not part of the product): the Admin GraphQL API
as the client uses it, faithful where it matters.

- POST /admin/api/<version>/graphql.json, X-Shopify-Access-Token checked (401 otherwise);
- `orders` and `customers` with first (at most 250), after (opaque cursors), query
  (`updated_at:>='…'`, `updated_at:<'…'`, quoted ISO dates) and sortKey UPDATED_AT; `shop`;
- `extensions.cost` from a leaky bucket (requested cost = 2 + first x node cost, refunded down
  to the actual cost), a query the bucket cannot cover answered 200 with a THROTTLED error;
  switchable forced throttling: 200 + THROTTLED, or 429 with Retry-After;
- seeded orders with refunds, cancellations, several currencies, channels and customers, and
  edits between syncs that bump updated_at as Shopify does;
- a webhook sender (WebhookSender) that posts a topic's JSON payload with Shopify's headers,
  signed with the app's secret, and can redeliver (same webhook id), send out of order, or
  send a badly signed delivery.
"""

import asyncio
import base64
import bisect
import hashlib
import hmac
import json
import math
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

PATH = re.compile(r"^/admin/api/(?P<version>\d{4}-\d{2}|unstable)/graphql\.json$")
BOUND = re.compile(r"updated_at:(?P<op>>=|<|>|<=)'(?P<at>[^']+)'")
LINE_ITEMS_FIRST = re.compile(r"lineItems\(first:\s*(\d+)\)")
MAX_QUERY_COST = 1000
CHANNELS = ("web", "pos", "shopify_draft_order", "amazon")
CURRENCIES = ("USD", "EUR", "JPY")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _money(amount: Decimal, currency: str) -> dict[str, Any]:
    return {"shopMoney": {"amount": str(amount), "currencyCode": currency}}


@dataclass
class ShopCustomer:
    id: str
    email: str | None
    first_name: str
    last_name: str
    updated_at: datetime

    def node(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "phone": None,
            "updatedAt": _iso(self.updated_at),
        }


@dataclass
class ShopOrder:
    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    currency: str
    channel: str
    customer: ShopCustomer | None
    line_items: list[tuple[str, int, Decimal]]  # title, quantity, unit price
    discount: Decimal = Decimal("0")
    shipping: Decimal = Decimal("0")
    refunded: Decimal = Decimal("0")
    cancelled_at: datetime | None = None
    fulfilled: bool = False

    @property
    def subtotal(self) -> Decimal:
        return sum((q * p for _, q, p in self.line_items), Decimal("0")) - self.discount

    @property
    def total(self) -> Decimal:
        return self.subtotal + self.shipping

    def financial_status(self) -> str:
        if self.refunded >= self.total and self.refunded > 0:
            return "REFUNDED"
        return "PARTIALLY_REFUNDED" if self.refunded > 0 else "PAID"

    def node(self, line_items_first: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "createdAt": _iso(self.created_at),
            "processedAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "cancelledAt": _iso(self.cancelled_at) if self.cancelled_at else None,
            "sourceName": self.channel,
            "currencyCode": self.currency,
            "displayFinancialStatus": self.financial_status(),
            "displayFulfillmentStatus": "FULFILLED" if self.fulfilled else "UNFULFILLED",
            "subtotalPriceSet": _money(self.subtotal, self.currency),
            "totalDiscountsSet": _money(self.discount, self.currency),
            "totalRefundedSet": _money(self.refunded, self.currency),
            "totalPriceSet": _money(self.total, self.currency),
            "customer": self.customer.node() if self.customer else None,
            "lineItems": {
                "nodes": [
                    {
                        "id": f"{self.id}/line/{i}",
                        "title": title,
                        "sku": f"SKU-{i}",
                        "quantity": quantity,
                        "originalUnitPriceSet": _money(price, self.currency),
                    }
                    for i, (title, quantity, price) in enumerate(self.line_items[:line_items_first])
                ]
            },
        }


@dataclass
class LeakyBucket:
    # Shopify's standard plan: a 2000-point bucket restored at 100 points a second.
    maximum: float = 2000.0
    restore_rate: float = 100.0
    available: float = 2000.0
    clock: Any = time.monotonic
    at: float = -1.0

    def level(self) -> float:
        now = self.clock()
        if self.at < 0:
            self.at = now
        self.available = min(self.maximum, self.available + (now - self.at) * self.restore_rate)
        self.at = now
        return self.available


class ShopifyStandIn:
    """The shop's state and its HTTP server; change the state between syncs."""

    def __init__(self, *, token: str = "shpat_test_token", seed: int = 7) -> None:
        self.tokens = {token}
        # Apps that may use the client-credentials grant (client id -> secret); the tokens they
        # get expire after token_lifetime_s (Shopify: 86,399 s).
        self.apps: dict[str, str] = {}
        self.token_lifetime_s = 86_399
        self.token_expiry: dict[str, float] = {}
        self.grants = 0
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.customers: dict[str, ShopCustomer] = {}
        self.orders: dict[str, ShopOrder] = {}
        self.bucket = LeakyBucket()
        # Forced throttling of the next calls: "graphql" (200 + THROTTLED) or "429".
        self.throttle_mode: str | None = None
        self.throttle_next = 0
        self.retry_after_seconds = 1.0
        self.calls = 0
        self.throttled = 0
        # Calls that arrived while the bucket could not cover them (a client that did not wait).
        self.uncovered_calls = 0
        self.queries: list[dict[str, Any]] = []
        # Called with the stream and variables before a page is answered (tests kill a
        # worker from here).
        self.before_page: Any = None
        self.clock = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3650)
        # Records Shopify's search index has not caught up with yet: not returned by queries.
        self.unindexed: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._index: dict[str, tuple[list[Any], list[tuple[datetime, str]]]] = {}
        self._next_id = 1000

    # --- the shop's data
    def tick(self) -> datetime:
        """Shop time: the wall clock in whole seconds (Shopify's precision), never before the
        last edit (seeding sets it into the past)."""
        with self.lock:
            self.clock = max(self.clock, datetime.now(UTC).replace(microsecond=0))
            return self.clock

    async def settle(self) -> None:
        """Wait until the second of the last edit is over: a sync started now reads it (a
        window ends at the whole second before its start)."""
        delay = (self.clock + timedelta(seconds=1) - datetime.now(UTC)).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)

    def add_customer(self, *, email: str | None = None, name: str = "Ana Lima") -> ShopCustomer:
        with self.lock:
            self._index.clear()
            self._next_id += 1
            first, _, last = name.partition(" ")
            customer = ShopCustomer(
                id=f"gid://shopify/Customer/{self._next_id}",
                email=email,
                first_name=first,
                last_name=last,
                updated_at=self.tick(),
            )
            self.customers[customer.id] = customer
            return customer

    def add_order(
        self,
        *,
        customer: ShopCustomer | None = None,
        currency: str = "USD",
        channel: str = "web",
        items: list[tuple[str, int, Decimal]] | None = None,
        discount: Decimal = Decimal("0"),
        shipping: Decimal = Decimal("5.00"),
        created_at: datetime | None = None,
    ) -> ShopOrder:
        with self.lock:
            self._index.clear()
            self._next_id += 1
            moment = self.tick()
            order = ShopOrder(
                id=f"gid://shopify/Order/{self._next_id}",
                name=f"#{self._next_id}",
                created_at=created_at or moment,
                updated_at=moment,
                currency=currency,
                channel=channel,
                customer=customer,
                line_items=items or [("T-shirt", 2, Decimal("19.99"))],
                discount=discount,
                shipping=shipping,
            )
            self.orders[order.id] = order
            return order

    def seed(self, orders: int, customers: int = 20, *, start: datetime | None = None) -> None:
        """Orders spread over past days (37 minutes apart), in several currencies and
        channels, some refunded or cancelled, most with a customer (a few without email)."""
        with self.lock:
            self._index.clear()
            spacing = timedelta(minutes=37)
            now = datetime.now(UTC).replace(microsecond=0)
            first = start or now - spacing * orders - timedelta(hours=1)
            people = []
            for i in range(customers):
                person = self.add_customer(
                    email=None if i % 7 == 3 else f"customer{i}@example.com", name=f"Buyer {i}"
                )
                person.updated_at = first - timedelta(days=1, seconds=-i)
                people.append(person)
            for i in range(orders):
                order = self.add_order(
                    customer=None if i % 11 == 5 else people[self.rng.randrange(customers)],
                    currency=CURRENCIES[i % len(CURRENCIES)] if i % 4 == 0 else "USD",
                    channel=CHANNELS[i % len(CHANNELS)],
                    items=[
                        ("Mug", self.rng.randint(1, 3), Decimal("12.50")),
                        ("Poster", 1, Decimal(self.rng.randint(10, 90))),
                    ],
                    discount=Decimal("5.00") if i % 5 == 0 else Decimal("0"),
                )
                order.created_at = order.updated_at = first + spacing * i
                if i % 9 == 4:
                    order.refunded = min(order.total, Decimal("10.00"))
                if i % 13 == 6:
                    order.refunded = order.total
                    order.cancelled_at = order.updated_at
            self.clock = now

    def edit(self, order_id: str, **changes: Any) -> ShopOrder:
        with self.lock:
            self._index.clear()
            order = self.orders[order_id]
            for key, value in changes.items():
                setattr(order, key, value)
            order.updated_at = self.tick()
            return order

    def refund(self, order_id: str, amount: Decimal, *, at_same_time: bool = False) -> ShopOrder:
        with self.lock:
            self._index.clear()
            order = self.orders[order_id]
            order.refunded = min(order.total, order.refunded + amount)
            if not at_same_time:
                order.updated_at = self.tick()
            return order

    def cancel(self, order_id: str, *, at_same_time: bool = False) -> ShopOrder:
        with self.lock:
            self._index.clear()
            order = self.orders[order_id]
            order.refunded = order.total
            order.cancelled_at = order.updated_at if at_same_time else self.tick()
            order.updated_at = order.cancelled_at
            return order

    # --- the server
    def start(self) -> str:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, Nagle's algorithm and the
            # client's delayed ACK add 40 ms to every keep-alive response.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, headers, body = stand_in.answer(self.path, dict(self.headers), raw)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- the protocol
    def answer(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        if path == "/admin/oauth/access_token":
            return self._grant(raw)
        if not PATH.match(path):
            return 404, {}, {"errors": "Not Found"}
        token = next((v for k, v in headers.items() if k.lower() == "x-shopify-access-token"), "")
        if token not in self.tokens or self.token_expiry.get(token, math.inf) <= time.monotonic():
            return (
                401,
                {},
                {
                    "errors": "[API] Invalid API key or access token "
                    "(unrecognized login or wrong password)"
                },
            )
        try:
            request = json.loads(raw)
            document, variables = request["query"], request.get("variables") or {}
        except (json.JSONDecodeError, KeyError, TypeError):
            return 400, {}, {"errors": {"query": "Required parameter missing or invalid"}}
        with self.lock:
            self.calls += 1
            if self.throttle_next > 0 and self.throttle_mode is not None:
                self.throttle_next -= 1
                self.throttled += 1
                if self.throttle_mode == "429":
                    return (
                        429,
                        {"Retry-After": str(self.retry_after_seconds)},
                        {
                            "errors": "Exceeded 2 calls per second for api client. "
                            "Reduce request rates"
                        },
                    )
                return 200, {}, self._throttled(self._requested(document, variables))
            requested = self._requested(document, variables)
            if requested > MAX_QUERY_COST:
                return (
                    200,
                    {},
                    {
                        "errors": [
                            {
                                "message": f"Query cost is {requested:.0f}, which exceeds "
                                f"the single query max cost limit ({MAX_QUERY_COST}).",
                                "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested},
                            }
                        ]
                    },
                )
            if self.bucket.level() < requested:
                self.uncovered_calls += 1
                self.throttled += 1
                return 200, {}, self._throttled(requested)
            self.bucket.available -= requested
            stream = (
                "orders"
                if re.search(r"\borders\(", document)
                else ("customers" if re.search(r"\bcustomers\(", document) else "shop")
            )
            self.queries.append({"stream": stream, **variables})
        if self.before_page is not None and stream != "shop":
            self.before_page(stream, variables)
        with self.lock:
            if stream == "shop":
                data: dict[str, Any] = {
                    "shop": {
                        "name": "Stand-in Shop",
                        "myshopifyDomain": "stand-in.myshopify.com",
                        "ianaTimezone": "America/New_York",
                        "currencyCode": "USD",
                    }
                }
                actual = 1.0
            else:
                first = int(variables.get("first") or 0)
                if not 1 <= first <= 250:
                    return (
                        200,
                        {},
                        {
                            "errors": [
                                {
                                    "message": "first must be between 1 and 250",
                                    "extensions": {"code": "BAD_REQUEST"},
                                }
                            ]
                        },
                    )
                nodes, info = self._page(stream, first, variables, document)
                data = {stream: {"nodes": nodes, "pageInfo": info}}
                actual = 2 + sum(self._actual_node_cost(stream, node) for node in nodes)
            # The bucket is refunded down to what the query actually cost.
            self.bucket.available = min(
                self.bucket.maximum, self.bucket.available + requested - actual
            )
            return 200, {}, {"data": data, "extensions": {"cost": self._cost(requested, actual)}}

    def _grant(self, raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        """The client-credentials grant: a new token for a known app and its secret."""
        try:
            request = json.loads(raw)
            client_id, secret = request["client_id"], request["client_secret"]
            grant_ok = request["grant_type"] == "client_credentials"
        except (json.JSONDecodeError, KeyError, TypeError):
            return 400, {}, {"error": "invalid_request"}
        if not grant_ok:
            return 400, {}, {"error": "unsupported_grant_type"}
        if self.apps.get(client_id) != secret:
            return 400, {}, {"error": "invalid_client"}
        token = new_token()
        with self.lock:
            self.grants += 1
            self.tokens.add(token)
            self.token_expiry[token] = time.monotonic() + self.token_lifetime_s
        scope = "read_orders,read_customers"
        return 200, {}, {"access_token": token, "scope": scope, "expires_in": self.token_lifetime_s}

    def _node_cost(self, stream: str, document: str) -> float:
        if stream == "customers":
            return 1
        found = LINE_ITEMS_FIRST.search(document)
        line_items = int(found.group(1)) if found else 0
        # The order, 4 money bags of 2 objects, the customer, and the line item connection.
        return 1 + 8 + 1 + (2 + line_items * 3 if found else 0)

    def _actual_node_cost(self, stream: str, node: dict[str, Any]) -> float:
        if stream == "customers":
            return 1
        return 1 + 8 + 1 + 2 + 3 * len(node["lineItems"]["nodes"])

    def _requested(self, document: str, variables: dict[str, Any]) -> float:
        if re.search(r"\borders\(", document):
            return 2 + int(variables.get("first") or 0) * self._node_cost("orders", document)
        if re.search(r"\bcustomers\(", document):
            return 2 + int(variables.get("first") or 0) * self._node_cost("customers", document)
        return 1

    def _cost(self, requested: float, actual: float | None) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": self.bucket.maximum,
                "currentlyAvailable": self.bucket.level(),
                "restoreRate": self.bucket.restore_rate,
            },
        }

    def _throttled(self, requested: float) -> dict[str, Any]:
        return {
            "errors": [
                {
                    "message": "Throttled",
                    "extensions": {
                        "code": "THROTTLED",
                        "documentation": "https://shopify.dev/api/usage/rate-limits",
                    },
                }
            ],
            "extensions": {"cost": self._cost(requested, None)},
        }

    def _by_update(self, stream: str) -> tuple[list[Any], list[tuple[datetime, str]]]:
        """The stream's records sorted by (updated_at, id), kept until the shop changes."""
        if stream not in self._index:
            table: dict[str, Any] = self.orders if stream == "orders" else self.customers
            ordered = sorted(table.values(), key=lambda r: (r.updated_at, r.id))
            self._index[stream] = (ordered, [(r.updated_at, r.id) for r in ordered])
        return self._index[stream]

    def _page(
        self, stream: str, first: int, variables: dict[str, Any], document: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        low: tuple[datetime, str] | None = None
        low_inclusive = True
        high: datetime | None = None
        for match in BOUND.finditer(variables.get("query") or ""):
            at = datetime.fromisoformat(match["at"].replace("Z", "+00:00"))
            if match["op"] in (">=", ">"):
                low, low_inclusive = (at, ""), match["op"] == ">="
            elif match["op"] == "<":
                high = at
            else:  # <=
                high = at + timedelta(microseconds=1)
        if low is not None and not low_inclusive:
            low = (low[0] + timedelta(microseconds=1), "")
        after = variables.get("after")
        if after:
            last_at, last_id = json.loads(base64.b64decode(after))
            cursor = (datetime.fromisoformat(last_at), last_id + "\x00")
            low = max(low, cursor) if low else cursor
        if "sortKey: UPDATED_AT" not in document:
            raise ValueError("the stand-in serves pages sorted by UPDATED_AT only")
        ordered, keys = self._by_update(stream)
        records = []
        for record in ordered[bisect.bisect_left(keys, low) if low else 0 :]:
            if high is not None and record.updated_at >= high:
                break
            if record.id in self.unindexed:
                continue
            records.append(record)
            if len(records) > first:
                break
        page = records[:first]
        found = LINE_ITEMS_FIRST.search(document)
        nodes = [
            r.node(int(found.group(1)) if found else 0) if stream == "orders" else r.node()
            for r in page
        ]
        end = (
            base64.b64encode(
                json.dumps([page[-1].updated_at.isoformat(), page[-1].id]).encode()
            ).decode()
            if page
            else None
        )
        return nodes, {"hasNextPage": len(records) > first, "endCursor": end}


def new_token() -> str:
    return f"shpat_{uuid.uuid4().hex}"


# --- webhooks: what Shopify posts to an app's endpoint when the shop changes
SHOP_DOMAIN = "stand-in.myshopify.com"


def _numeric_id(gid: str) -> int:
    return int(gid.rsplit("/", 1)[-1])


def order_payload(order: ShopOrder) -> dict[str, Any]:
    """An order as the REST-style webhook body carries it (orders/create, orders/updated)."""
    return {
        "id": _numeric_id(order.id),
        "admin_graphql_api_id": order.id,
        "name": order.name,
        "created_at": _iso(order.created_at),
        "updated_at": _iso(order.updated_at),
        "cancelled_at": _iso(order.cancelled_at) if order.cancelled_at else None,
        "currency": order.currency,
        "source_name": order.channel,
        "financial_status": order.financial_status().lower(),
        "subtotal_price": str(order.subtotal),
        "total_discounts": str(order.discount),
        "total_price": str(order.total),
        "customer": customer_payload(order.customer) if order.customer else None,
        "line_items": [
            {"title": title, "quantity": quantity, "price": str(price)}
            for title, quantity, price in order.line_items
        ],
    }


def customer_payload(customer: ShopCustomer) -> dict[str, Any]:
    return {
        "id": _numeric_id(customer.id),
        "admin_graphql_api_id": customer.id,
        "email": customer.email,
        "first_name": customer.first_name,
        "last_name": customer.last_name,
        "updated_at": _iso(customer.updated_at),
    }


def refund_payload(order: ShopOrder, amount: Decimal) -> dict[str, Any]:
    return {
        "id": random.randrange(10**9),
        "order_id": _numeric_id(order.id),
        "created_at": _iso(order.updated_at),
        "transactions": [{"kind": "refund", "amount": str(amount), "currency": order.currency}],
    }


def shop_payload() -> dict[str, Any]:
    """The body of app/uninstalled: the shop itself."""
    return {"id": 548380009, "name": "Stand-in Shop", "myshopify_domain": SHOP_DOMAIN}


@dataclass
class SentWebhook:
    url: str
    topic: str
    webhook_id: str
    body: bytes
    headers: dict[str, str]


class WebhookSender:
    """Posts webhooks the way Shopify does: the topic's JSON body, X-Shopify-Hmac-Sha256 the
    base64 HMAC-SHA256 of the raw body under the app's secret, and the other X-Shopify headers.
    `transport` lets a test post to an ASGI app in-process (httpx.ASGITransport)."""

    def __init__(
        self,
        secret: str,
        *,
        shop_domain: str = SHOP_DOMAIN,
        api_version: str = "2025-07",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.secret = secret
        self.shop_domain = shop_domain
        self.api_version = api_version
        self.transport = transport
        self.sent: list[SentWebhook] = []

    def sign(self, body: bytes, secret: str | None = None) -> str:
        key = (secret or self.secret).encode()
        return base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()

    async def send(
        self,
        url: str,
        topic: str,
        payload: dict[str, Any],
        *,
        signed_with: str | None = None,
        signature: str | None = None,
    ) -> httpx.Response:
        """One new delivery (a fresh webhook id). `signed_with` signs with another secret,
        `signature` sends that header verbatim ("" leaves it out): badly signed deliveries."""
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Shop-Domain": self.shop_domain,
            "X-Shopify-API-Version": self.api_version,
            "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(),
            "X-Shopify-Event-Id": str(uuid.uuid4()),
        }
        hmac_header = self.sign(body, signed_with) if signature is None else signature
        if hmac_header:
            headers["X-Shopify-Hmac-Sha256"] = hmac_header
        delivery = SentWebhook(url, topic, headers["X-Shopify-Webhook-Id"], body, headers)
        self.sent.append(delivery)
        return await self._post(delivery)

    async def redeliver(self, delivery: SentWebhook) -> httpx.Response:
        """The same delivery again (Shopify's retry, or a duplicate): same id, same body."""
        return await self._post(delivery)

    async def _post(self, delivery: SentWebhook) -> httpx.Response:
        async with httpx.AsyncClient(transport=self.transport, timeout=30.0) as http:
            return await http.post(delivery.url, content=delivery.body, headers=delivery.headers)
