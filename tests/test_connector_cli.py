"""`changeflow connector ...` and `changeflow commerce report`, run as a person runs them: a
shop connected from the command line, synced, changed and synced again, reported, disabled,
its credentials rotated; secrets only ever in the environment."""

import asyncio
import csv
import io
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from models.db import SessionFactory
from scripts.shopify_stand_in import ShopifyStandIn
from tests.cli_support import changeflow, ok, refused
from tests.commerce_support import TOKEN, commerce_settings
from tests.workers import running_workers
from workflows.contracts.ids import order_sync_schedule_id

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.shop_seed(orders=30, customers=6),
]


async def test_a_shop_connected_synced_reported_and_disabled_from_the_command_line(
    client: Client,
    sessions: SessionFactory,
    env: dict[str, str],
    task_queue: str,
    tmp_path: Path,
    shop: ShopifyStandIn,
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    keys = settings.credential_keys
    assert keys is not None
    env["CHANGEFLOW_CREDENTIAL_KEYS"] = keys.get_secret_value()
    slug = (await ok(env, "tenant", "create", "Corner Shop", "--json")).json["slug"]

    # No secret given: refused before anything is written.
    await refused(env, "InvalidConnectorConfig", "connector", "create", "-t", slug,
                  "--shop-url", shop.url)  # fmt: skip
    assert (await ok(env, "connector", "list", "-t", slug, "--json")).json == []

    with_token = {**env, "SHOPIFY_ACCESS_TOKEN": TOKEN}
    created = await ok(with_token, "connector", "create", "-t", slug, "--shop-url", shop.url,
                       "--name", "Main shop", "--json")  # fmt: skip
    connector = created.json
    assert connector["status"] == "active" and connector["schedule"] == "created"
    assert TOKEN not in created.out + created.err
    connector_id = connector["id"]
    await client.get_schedule_handle(order_sync_schedule_id(connector_id)).describe()

    async with running_workers(client, sessions, settings):
        first = (await ok(env, "connector", "sync", connector_id, "--json")).json
        assert first["counts"]["orders"]["inserted"] == 30
        changed = next(iter(shop.orders))
        shop.refund(changed, Decimal("5.00"))
        await shop.settle()
        again = await ok(env, "connector", "sync", connector_id)
        assert "orders: 1 fetched, 0 inserted, 1 updated" in again.out

        day = shop.orders[changed].created_at.date().isoformat()
        report_csv = tmp_path / "daily.csv"
        report = await ok(env, "commerce", "report", "-t", slug, "--from", day, "--to", day,
                          "--timezone", "UTC", "--csv", str(report_csv))  # fmt: skip
        assert "Daily revenue" in report.out and "repeat-purchase rate" in report.out
        rows = list(csv.DictReader(io.StringIO(await asyncio.to_thread(report_csv.read_text))))
        placed_that_day = [
            o for o in shop.orders.values() if o.created_at.date().isoformat() == day
        ]
        # Sales only: cancelled and test orders (the seed's Bogus Gateway ones) are not sales.
        assert sum(int(r["orders"]) for r in rows) == len(
            [o for o in placed_that_day if o.cancelled_at is None and not o.test]
        )

    disabled = (await ok(env, "connector", "disable", connector_id, "--json")).json
    assert disabled["status"] == "disabled" and disabled["schedule"] == "deleted"
    with pytest.raises(RPCError):
        await client.get_schedule_handle(order_sync_schedule_id(connector_id)).describe()

    # A revoked token: the rotation is stored, enabling tests it and leaves the reason.
    shop.tokens = {"shpat_new"}
    await ok({**env, "SHOPIFY_ACCESS_TOKEN": "shpat_wrong"}, "connector", "rotate", connector_id)
    enabled = await changeflow(env, "connector", "enable", connector_id, "--json")
    assert (
        enabled.json["status"] == "error"
        and "refused the access token" in enabled.json["last_error"]
    )
    rotated = await ok({**env, "SHOPIFY_ACCESS_TOKEN": "shpat_new"}, "connector", "rotate",
                       connector_id, "--json")  # fmt: skip
    assert rotated.json["status"] == "active" and rotated.json["schedule"] == "created"
    listed = await ok({**env, "COLUMNS": "200"}, "connector", "list", "-t", slug)
    assert "Main shop" in listed.out and "active" in listed.out
    assert "shpat" not in listed.out


async def test_an_unknown_connector_is_refused_with_its_type(env: dict[str, str]) -> None:
    await refused(env, "ConnectorNotFound", "connector", "show",
                  "00000000-0000-0000-0000-000000000000")  # fmt: skip
