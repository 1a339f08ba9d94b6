"""A local Shopify for tests and benchmarks (not part of the product): the Admin GraphQL API
of version 2026-10 as Shopify documents it, faithful where it matters. The documentation facts
it follows, with their sources, are in scripts/shopify_facts.md beside it: the served version
header, money bags, protected customer data, deprecated customer fields, line item paging,
refunds, test orders, webhook subscriptions and the privacy webhooks' bodies.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

PATH = re.compile(r"^/admin/api/(?P<version>\d{4}-\d{2}|unstable)/graphql\.json$")
# Stable versions supported in December 2026 (quarterly releases, 12 months each). A request
# for another is served by the oldest supported one; every answer names the version served.
SUPPORTED_VERSIONS = ("2026-01", "2026-04", "2026-07", "2026-10")
SHOP_CURRENCY = "USD"
# Fixed rates from an order's (presentment) currency to the shop's: shopMoney is always in
# the shop's currency, presentmentMoney in the order's.
RATES = {"USD": Decimal("1"), "EUR": Decimal("1.08"), "JPY": Decimal("0.0067")}
# Customer fields Shopify marks protected (level 2: name, email, phone) and the deprecated
# ones the current fields replace.
PROTECTED_CUSTOMER_FIELDS = ("firstName", "lastName", "defaultEmailAddress", "defaultPhoneNumber")
DEPRECATED_CUSTOMER_FIELDS = re.compile(r"\b(email|phone)\b(?!Address|Number)")
BOUND = re.compile(r"updated_at:(?P<op>>=|<|>|<=)'(?P<at>[^']+)'")
LINE_ITEMS_FIRST = re.compile(r"lineItems\(first:\s*(\d+)\)")
MAX_QUERY_COST = 1000
# Query costs (shopify.dev/docs/api/usage/limits#cost-calculation): an object 1, a connection
# 2 + first x its node's cost. An order: itself, four money bags of 3 (the bag, shopMoney,
# presentmentMoney), its refunds (a refund and its bag), its customer with its email and phone
# objects; a line item with its bag is 4; a customer with its email and phone objects is 3.
ORDER_COST = 1 + 4 * 3 + 4 + 3
LINE_ITEM_COST = 4
CUSTOMER_COST = 3
ROOT_FIELD = re.compile(r"^\s*(?:query|mutation)\b[^{]*\{\s*(\w+)", re.S)
BULK_ROOTS = ("bulkOperationRunQuery", "currentBulkOperation")
# ordersCount / customersCount(query:, limit:) -> Count {count precision}; limit 10000 unless
# null (uncapped since 2025-07).
COUNT_ROOTS = {"ordersCount": "orders", "customersCount": "customers"}
COUNT_LIMIT = 10_000
# The connection a bulk query's document reads: `{ orders(query: ...) { edges ... } }`.
BULK_CONNECTION = re.compile(r"^\s*\{\s*(\w+)\s*\(")


def _root_field(document: str) -> str:
    found = ROOT_FIELD.search(document)
    return found.group(1) if found else ""


def _customer_selections(document: str) -> str:
    """The selection sets of `customer { ... }` / customers' nodes in a document."""
    found = re.findall(
        r"customer\s*\{([^}]*)\}|customers\([^)]*\)\s*\{.*?nodes\s*\{([^}]*)\}", document, re.S
    )
    return " ".join(a or b for a, b in found)


def _access_denied(path: list[Any]) -> dict[str, Any]:
    field_name = next(p for p in reversed(path) if isinstance(p, str))
    return {
        "message": f"Access denied for {field_name} field.",
        "path": path,
        "extensions": {
            "code": "ACCESS_DENIED",
            "documentation": "https://shopify.dev/docs/apps/launch/protected-customer-data",
        },
    }


CHANNELS = ("web", "pos", "shopify_draft_order", "amazon")
CURRENCIES = ("USD", "EUR", "JPY")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _exponent(currency: str) -> int:
    return 0 if currency == "JPY" else 2


def in_shop_currency(amount: Decimal, currency: str) -> Decimal:
    """An amount of `currency` in the shop's currency, rounded to its minor unit."""
    return (amount * RATES[currency]).quantize(Decimal(1).scaleb(-_exponent(SHOP_CURRENCY)))


def _money(amount: Decimal, currency: str) -> dict[str, Any]:
    return {
        "shopMoney": {
            "amount": str(in_shop_currency(amount, currency)),
            "currencyCode": SHOP_CURRENCY,
        },
        "presentmentMoney": {"amount": str(amount), "currencyCode": currency},
    }


@dataclass
class ShopCustomer:
    id: str
    email: str | None
    first_name: str
    last_name: str
    updated_at: datetime

    phone: str | None = None

    def node(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "defaultEmailAddress": {"emailAddress": self.email} if self.email else None,
            "defaultPhoneNumber": {"phoneNumber": self.phone} if self.phone else None,
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
    # Each refund: when, and how much (in the order's currency).
    refunds: list[tuple[datetime, Decimal]] = field(default_factory=list)
    cancelled_at: datetime | None = None
    fulfilled: bool = False
    test: bool = False

    @property
    def refunded(self) -> Decimal:
        return sum((amount for _, amount in self.refunds), Decimal("0"))

    def refund_to(self, refunded: Decimal, at: datetime) -> None:
        """Refund up to `refunded` in all, at `at` (a refund of the difference)."""
        if refunded > self.refunded:
            self.refunds.append((at, refunded - self.refunded))

    def refunded_set(self) -> dict[str, Any]:
        """Refunds in all: each converted to the shop's currency when it was made."""
        bag = _money(self.refunded, self.currency)
        bag["shopMoney"]["amount"] = str(self.shop_refunded)
        return bag

    @property
    def shop_refunded(self) -> Decimal:
        return sum((self.shop(amount) for _, amount in self.refunds), Decimal("0"))

    def shop(self, amount: Decimal) -> Decimal:
        """An amount of this order in the shop's currency, as shopMoney carries it."""
        return in_shop_currency(amount, self.currency)

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

    def node(self, line_items_first: int, after: int = 0) -> dict[str, Any]:
        return {
            "id": self.id,
            "test": self.test,
            "name": self.name,
            "createdAt": _iso(self.created_at),
            "processedAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "cancelledAt": _iso(self.cancelled_at) if self.cancelled_at else None,
            "sourceName": self.channel,
            "currencyCode": SHOP_CURRENCY,
            "presentmentCurrencyCode": self.currency,
            "displayFinancialStatus": self.financial_status(),
            "displayFulfillmentStatus": "FULFILLED" if self.fulfilled else "UNFULFILLED",
            "subtotalPriceSet": _money(self.subtotal, self.currency),
            "totalDiscountsSet": _money(self.discount, self.currency),
            "totalRefundedSet": self.refunded_set(),
            "totalPriceSet": _money(self.total, self.currency),
            "refunds": [
                {"createdAt": _iso(at), "totalRefundedSet": _money(amount, self.currency)}
                for at, amount in self.refunds
            ],
            "customer": self.customer.node() if self.customer else None,
            "lineItems": self.line_item_page(line_items_first, after),
        }

    def line_item_page(self, first: int, after: int) -> dict[str, Any]:
        """A page of the order's line items; cursors are opaque to the client."""
        page = self.line_items[after : after + first]
        end = after + len(page)
        return {
            "pageInfo": {
                "hasNextPage": end < len(self.line_items),
                "endCursor": base64.b64encode(f"li:{end}".encode()).decode() if page else None,
            },
            "nodes": [
                {
                    "id": f"{self.id}/line/{after + i}",
                    "title": title,
                    "sku": f"SKU-{after + i}",
                    "quantity": quantity,
                    "originalUnitPriceSet": _money(price, self.currency),
                }
                for i, (title, quantity, price) in enumerate(page)
            ],
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
        # Queries that selected a deprecated customer field (Customer.email, Customer.phone).
        self.deprecated_uses = 0
        # Shopify's single-query limit (lower it to make every page refused).
        self.max_query_cost = MAX_QUERY_COST
        # The app's protected customer data access: "full" (level 2: name, email, phone),
        # "level1" (customers without those fields), "none" (no customer data at all).
        self.protected_access = "full"
        # Webhook subscriptions the app made (webhookSubscriptionCreate): topic -> uri.
        self.webhook_subscriptions: dict[str, str] = {}
        # The app's bulk query operation (one at a time) and how many polls it stays RUNNING.
        self.bulk: dict[str, Any] | None = None
        self.bulk_running_polls = 2
        self.bulk_operations = 0
        # The connection each bulk operation read (orders, customers), in order.
        self.bulk_streams: list[str] = []
        # The next bulk operation ends FAILED with this errorCode (INTERNAL_SERVER_ERROR, ...).
        self.bulk_fail_next: str | None = None
        # The next download of a stream's bulk result stops after this fraction of its bytes,
        # the connection closed (a download cut off: the file stays, a retry reads it again).
        self.bulk_download_cut: dict[str, float] = {}
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

    def add_customer(
        self, *, email: str | None = None, name: str = "Ana Lima", phone: str | None = None
    ) -> ShopCustomer:
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
                phone=phone,
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
                # Refunds come days later, as in a shop (a report counts them on their day).
                refunded_at = min(order.created_at + timedelta(days=2), now - timedelta(hours=1))
                refunded_at = max(refunded_at, order.created_at)
                if i % 9 == 4:
                    order.refund_to(min(order.total, Decimal("10.00")), refunded_at)
                    order.updated_at = refunded_at
                if i % 13 == 6:
                    order.cancelled_at = order.updated_at = refunded_at
                    order.refund_to(order.total, refunded_at)
                # A few test orders (Shopify's Bogus Gateway): never sales.
                order.test = i % 17 == 8
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
            if not at_same_time:
                order.updated_at = self.tick()
            order.refund_to(min(order.total, order.refunded + amount), order.updated_at)
            return order

    def cancel(self, order_id: str, *, at_same_time: bool = False) -> ShopOrder:
        with self.lock:
            self._index.clear()
            order = self.orders[order_id]
            order.cancelled_at = order.updated_at if at_same_time else self.tick()
            order.updated_at = order.cancelled_at
            order.refund_to(order.total, order.cancelled_at)
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

            def do_GET(self) -> None:
                found = re.fullmatch(r"/bulk/(\d+)\.jsonl", self.path)
                body = stand_in.bulk_result(found.group(1)) if found else None
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/jsonl")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                with stand_in.lock:
                    cut = stand_in.bulk_download_cut.pop(
                        stand_in.bulk["stream"] if body and stand_in.bulk else "", None
                    )
                if cut is not None:
                    self.wfile.write((body or b"")[: int(len(body or b"") * cut)])
                    self.close_connection = True
                    return
                self.wfile.write(body or b"")

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
        # shutdown() waits for the serving loop's next look (every 0.5 s by default).
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
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
        matched = PATH.match(path)
        if not matched:
            return 404, {}, {"errors": "Not Found"}
        asked = matched["version"]
        served = (
            asked if asked in SUPPORTED_VERSIONS or asked == "unstable" else SUPPORTED_VERSIONS[0]
        )
        status, extra, body = self._graphql(headers, raw)
        return status, {"X-Shopify-API-Version": served, **extra}, body

    def _graphql(
        self, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
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
        root = _root_field(document)
        with self.lock:
            self.calls += 1
            if DEPRECATED_CUSTOMER_FIELDS.search(_customer_selections(document)):
                self.deprecated_uses += 1
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
                return 200, {}, self._throttled(self._requested(root, document, variables))
            requested = self._requested(root, document, variables)
            if requested > self.max_query_cost:
                return (
                    200,
                    {},
                    {
                        "errors": [
                            {
                                "message": f"Query cost is {requested:.0f}, which exceeds "
                                f"the single query max cost limit ({self.max_query_cost}).",
                                "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested},
                            }
                        ]
                    },
                )
            if root not in BULK_ROOTS and self.bucket.level() < requested:
                self.uncovered_calls += 1
                self.throttled += 1
                return 200, {}, self._throttled(requested)
            if root not in BULK_ROOTS:
                self.bucket.available -= requested
            self.queries.append({"stream": root, **variables})
        if self.before_page is not None and root in ("orders", "customers"):
            self.before_page(root, variables)
        with self.lock:
            errors: list[dict[str, Any]] = []
            data, actual = self._resolve(root, document, variables, errors)
            if isinstance(data, tuple):  # a refusal of the arguments
                return 200, {}, {"errors": [data[1]]}
            # The bucket is refunded down to what the query actually cost.
            if root not in BULK_ROOTS:
                self.bucket.available = min(
                    self.bucket.maximum, self.bucket.available + requested - actual
                )
            body: dict[str, Any] = {"data": data}
            if errors:
                body["errors"] = errors
            body["extensions"] = {"cost": self._cost(requested, actual)}
            return 200, {}, body

    def _resolve(
        self, root: str, document: str, variables: dict[str, Any], errors: list[dict[str, Any]]
    ) -> tuple[Any, float]:
        """The `data` of one query and its actual cost (errors appended)."""
        if root == "shop":
            return {
                "shop": {
                    "name": "Stand-in Shop",
                    "myshopifyDomain": SHOP_DOMAIN,
                    "ianaTimezone": "America/New_York",
                    "currencyCode": SHOP_CURRENCY,
                }
            }, 1.0
        if root == "order":
            order = self.orders.get(str(variables.get("id")))
            if order is None:
                return {"order": None}, 1.0
            after = variables.get("after")
            start = int(base64.b64decode(after).decode().split(":")[1]) if after else 0
            page = order.line_item_page(int(variables.get("first") or 0), start)
            return {"order": {"lineItems": page}}, 3 + 4 * len(page["nodes"])
        if root in ("webhookSubscriptions", "webhookSubscriptionCreate"):
            return self._webhook_subscriptions(root, variables), 10.0
        if root in BULK_ROOTS:
            return self._bulk(root, variables), 10.0
        if root in COUNT_ROOTS:
            return {root: self._count(COUNT_ROOTS[root], variables)}, 1.0
        stream = root
        first = int(variables.get("first") or 0)
        if not 1 <= first <= 250:
            refusal = {
                "message": "first must be between 1 and 250",
                "extensions": {"code": "BAD_REQUEST"},
            }
            return ("refused", refusal), 0.0
        if stream == "customers" and self.protected_access == "none":
            errors.append(_access_denied(["customers"]))
            return {"customers": None}, 1.0
        nodes, info = self._page(stream, first, variables, document)
        for i, node in enumerate(nodes):
            self._protect(stream, i, node, errors)
        actual = 2 + sum(self._actual_node_cost(stream, node) for node in nodes)
        return {stream: {"nodes": nodes, "pageInfo": info}}, actual

    def _bulk(self, root: str, variables: dict[str, Any]) -> dict[str, Any]:
        """bulkOperationRunQuery runs the orders query of its document (its `query:` filter)
        over the whole shop; currentBulkOperation reports RUNNING for `bulk_running_polls`
        polls, then COMPLETED with the JSONL's url: each order a line, each line item a line
        of its own after it with `__parentId`. One bulk query at a time, as Shopify allows."""
        if root == "bulkOperationRunQuery":
            if self.bulk is not None and self.bulk["status"] == "RUNNING":
                return {
                    "bulkOperationRunQuery": {
                        "bulkOperation": None,
                        "userErrors": [
                            {
                                "field": None,
                                "message": "A bulk query operation for this app and shop "
                                "is already in progress",
                            }
                        ],
                    }
                }
            self._next_id += 1
            document = str(variables.get("query") or "")
            found = re.search(r'query:\s*"([^"]*)"', document)
            # The result is written when it is fetched: a big shop's operation starts at once.
            search = found.group(1) if found else ""
            connection = BULK_CONNECTION.search(document)
            stream = connection.group(1) if connection else "orders"
            self.bulk = {
                "id": f"gid://shopify/BulkOperation/{self._next_id}",
                "status": "RUNNING",
                "polls": 0,
                "search": search,
                "stream": stream,
                "lines": None,
                "created_at": _iso(datetime.now(UTC)),
                "completed_at": None,
            }
            self.bulk_operations += 1
            self.bulk_streams.append(stream)
            operation = self.bulk

            ordered = list(self._by_update(stream)[0])

            def run() -> None:  # in the background, as Shopify runs it
                lines = _bulk_lines(ordered, search)
                with self.lock:
                    operation["lines"] = lines

            threading.Thread(target=run, daemon=True).start()
            return {
                "bulkOperationRunQuery": {
                    "bulkOperation": {"id": self.bulk["id"], "status": "CREATED"},
                    "userErrors": [],
                }
            }
        if self.bulk is None:
            return {"currentBulkOperation": None}
        self.bulk["polls"] += 1
        if (
            self.bulk["status"] == "RUNNING"
            and self.bulk["polls"] > self.bulk_running_polls
            and self.bulk["lines"] is not None
        ):
            self._complete_bulk()
        completed = self.bulk["status"] == "COMPLETED"
        return {
            "currentBulkOperation": {
                "id": self.bulk["id"],
                "status": self.bulk["status"],
                "errorCode": self.bulk.get("error_code"),
                "createdAt": self.bulk["created_at"],
                "objectCount": str(len(self.bulk["lines"] or [])),
                "url": f"{self.url}/bulk/{self.bulk['id'].rsplit('/', 1)[-1]}.jsonl"
                if completed and self.bulk["lines"]
                else None,
            }
        }

    def _complete_bulk(self) -> None:
        assert self.bulk is not None
        if self.bulk_fail_next:
            # FAILED with its BulkOperationErrorCode, no result (no url).
            self.bulk["status"], self.bulk["error_code"] = "FAILED", self.bulk_fail_next
            self.bulk["lines"], self.bulk_fail_next = [], None
        else:
            self.bulk["status"] = "COMPLETED"
        self.bulk["completed_at"] = _iso(datetime.now(UTC))

    def bulk_running(self) -> bool:
        with self.lock:
            return self.bulk is not None and self.bulk["status"] == "RUNNING"

    async def finish_bulk(self) -> dict[str, Any]:
        """Complete the running bulk operation now (its result written) and return the body
        of the `bulk_operations/finish` webhook Shopify sends to the subscribed app."""
        while True:
            with self.lock:
                assert self.bulk is not None, "no bulk operation ran"
                if self.bulk["lines"] is not None:
                    if self.bulk["status"] == "RUNNING":
                        self._complete_bulk()
                    return bulk_finish_payload(self.bulk)
            await asyncio.sleep(0.05)

    def _count(self, stream: str, variables: dict[str, Any]) -> dict[str, Any]:
        """A Count of the stream's records the search selects, capped at `limit` (AT_LEAST)."""
        search = str(variables.get("query") or "")
        ordered = self._by_update(stream)[0]
        found = sum(1 for r in ordered if _selected(r.updated_at, search))
        limit = variables.get("limit", COUNT_LIMIT)
        if limit is not None and found > int(limit):
            return {"count": int(limit), "precision": "AT_LEAST"}
        return {"count": found, "precision": "EXACT"}

    def bulk_result(self, name: str) -> bytes | None:
        """The JSONL a bulk operation's url serves."""
        if (
            self.bulk is None
            or not self.bulk["id"].endswith(f"/{name}")
            or self.bulk["lines"] is None
        ):
            return None
        return b"".join(line + b"\n" for line in self.bulk["lines"])

    def _webhook_subscriptions(self, root: str, variables: dict[str, Any]) -> dict[str, Any]:
        """webhookSubscriptions (topic, uri) and webhookSubscriptionCreate(topic,
        webhookSubscription: {uri, format}); a topic subscribed twice to one uri is a user
        error, as Shopify answers ("Address for this topic has already been taken")."""
        if root == "webhookSubscriptions":
            return {
                "webhookSubscriptions": {
                    "nodes": [
                        {"id": f"gid://shopify/WebhookSubscription/{i}", "topic": t, "uri": u}
                        for i, (t, u) in enumerate(sorted(self.webhook_subscriptions.items()))
                    ]
                }
            }
        topic = str(variables.get("topic"))
        uri = str((variables.get("webhookSubscription") or {}).get("uri") or "")
        if self.webhook_subscriptions.get(topic) == uri:
            return {
                "webhookSubscriptionCreate": {
                    "webhookSubscription": None,
                    "userErrors": [
                        {
                            "field": ["webhookSubscription", "uri"],
                            "message": "Address for this topic has already been taken",
                        }
                    ],
                }
            }
        self.webhook_subscriptions[topic] = uri
        return {
            "webhookSubscriptionCreate": {
                "webhookSubscription": {
                    "id": f"gid://shopify/WebhookSubscription/{len(self.webhook_subscriptions)}",
                    "topic": topic,
                    "uri": uri,
                },
                "userErrors": [],
            }
        }

    def _protect(
        self, stream: str, index: int, node: dict[str, Any], errors: list[dict[str, Any]]
    ) -> None:
        """Protected customer data the app has no access to: null, and ACCESS_DENIED."""
        if self.protected_access == "full":
            return
        if stream == "orders":
            if node.get("customer") is None:
                return
            if self.protected_access == "none":
                node["customer"] = None
                errors.append(_access_denied(["orders", "nodes", index, "customer"]))
                return
            customer, at = node["customer"], ["orders", "nodes", index, "customer"]
        else:
            customer, at = node, ["customers", "nodes", index]
        for name in PROTECTED_CUSTOMER_FIELDS:
            customer[name] = None
            errors.append(_access_denied([*at, name]))

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
            return CUSTOMER_COST
        found = LINE_ITEMS_FIRST.search(document)
        line_items = int(found.group(1)) if found else 0
        return ORDER_COST + (2 + line_items * LINE_ITEM_COST if found else 0)

    def _actual_node_cost(self, stream: str, node: dict[str, Any]) -> float:
        if stream == "customers":
            return CUSTOMER_COST
        return ORDER_COST + 2 + LINE_ITEM_COST * len(node["lineItems"]["nodes"])

    def _requested(self, root: str, document: str, variables: dict[str, Any]) -> float:
        if root in ("orders", "customers"):
            return 2 + int(variables.get("first") or 0) * self._node_cost(root, document)
        if root == "order":
            return 3 + int(variables.get("first") or 0) * LINE_ITEM_COST
        if root in ("webhookSubscriptions", "webhookSubscriptionCreate", *BULK_ROOTS):
            return 10
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


def _bounds(search: str) -> tuple[datetime | None, datetime | None]:
    low = high = None
    for match in BOUND.finditer(search):
        at = datetime.fromisoformat(match["at"].replace("Z", "+00:00"))
        if match["op"] == ">=":
            low = at
        elif match["op"] == "<":
            high = at
    return low, high


def _selected(updated_at: datetime, search: str) -> bool:
    low, high = _bounds(search)
    return not ((low and updated_at < low) or (high and updated_at >= high))


def bulk_finish_payload(operation: dict[str, Any]) -> dict[str, Any]:
    """The `bulk_operations/finish` webhook body (shopify.dev bulk operations guide): the
    operation's admin_graphql_api_id, status and type in lower case, error_code, and its
    created_at and completed_at."""
    error = operation.get("error_code")
    return {
        "admin_graphql_api_id": operation["id"],
        "completed_at": operation.get("completed_at"),
        "created_at": operation["created_at"],
        "error_code": error.lower() if error else None,
        "status": str(operation["status"]).lower(),
        "type": "query",
    }


def _bulk_lines(ordered: list[Any], search: str) -> list[bytes]:
    """The JSONL lines of the records a bulk query's search selects: a customer a line; an
    order a line, then each of its line items a line with `__parentId`."""
    lines: list[bytes] = []
    low, high = _bounds(search)
    for record in ordered:
        if (low and record.updated_at < low) or (high and record.updated_at >= high):
            continue
        if isinstance(record, ShopCustomer):
            lines.append(json.dumps(record.node()).encode())
            continue
        order = record
        node = order.node(len(order.line_items) or 1)
        items = node.pop("lineItems")["nodes"]
        lines.append(json.dumps(node).encode())
        lines.extend(json.dumps({**item, "__parentId": order.id}).encode() for item in items)
    return lines


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


def order_delete_payload(order: ShopOrder) -> dict[str, Any]:
    """orders/delete: only the deleted order's id."""
    return {"id": _numeric_id(order.id)}


def _privacy_customer(customer: ShopCustomer) -> dict[str, Any]:
    return {"id": _numeric_id(customer.id), "email": customer.email, "phone": customer.phone}


def customers_redact_payload(customer: ShopCustomer, orders: list[ShopOrder]) -> dict[str, Any]:
    """customers/redact (shopify.dev/docs/apps/build/compliance/privacy-law-compliance)."""
    return {
        "shop_id": 954889,
        "shop_domain": SHOP_DOMAIN,
        "customer": _privacy_customer(customer),
        "orders_to_redact": [_numeric_id(o.id) for o in orders],
    }


def data_request_payload(customer: ShopCustomer, orders: list[ShopOrder]) -> dict[str, Any]:
    """customers/data_request: the customer, the orders they asked about, the request's id."""
    return {
        "shop_id": 954889,
        "shop_domain": SHOP_DOMAIN,
        "orders_requested": [_numeric_id(o.id) for o in orders],
        "customer": _privacy_customer(customer),
        "data_request": {"id": 9999},
    }


def shop_redact_payload() -> dict[str, Any]:
    """shop/redact, 48 hours after the app was uninstalled."""
    return {"shop_id": 954889, "shop_domain": SHOP_DOMAIN}


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
        api_version: str = SUPPORTED_VERSIONS[-1],
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
