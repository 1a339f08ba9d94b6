"""Connectors and their credentials: a test is a real call to the shop, a failed one leaves
the connector in error with a readable reason, a sync with bad credentials writes nothing and
is recorded as failed, rotation mends it; secrets are ciphertext at rest, bound to their row,
re-encrypted by key rotation, and absent from histories and logs."""

import logging
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import select
from temporalio.client import Client, WorkflowFailureError

from activities.connectors import ConnectorError
from activities.credentials import CredentialError, CredentialStore, KeyRing, KeyRingError
from models.commerce import ConnectorCredential, ModuleExecutionStatus
from models.db import SessionFactory
from models.projects import ConnectorKind, ConnectorStatus
from scripts.shopify_stand_in import ShopifyStandIn
from tests.commerce_support import (
    TOKEN,
    commerce_settings,
    connect_shop,
    connector_row,
    executions_of,
    key_spec,
    orders_of,
    sync,
)
from tests.factories import make_tenant
from tests.workers import running_workers
from workflows.contracts.errors import ErrorType, error_type
from workflows.contracts.ids import order_sync_workflow_id

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.shop_seed(orders=12, customers=4),
]


async def test_a_good_token_makes_the_connector_active_and_records_the_shop(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    connected = await connect_shop(sessions, commerce_settings(task_queue, tmp_path), client, shop)
    assert connected.connector.status is ConnectorStatus.ACTIVE
    assert connected.connector.last_error is None
    assert connected.connector.config["timezone"] == "America/New_York"


async def test_a_bad_token_leaves_the_connector_in_error_and_a_sync_writes_nothing(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop, token="shpat_wrong")
    assert connected.connector.status is ConnectorStatus.ERROR
    assert "refused the access token (HTTP 401)" in (connected.connector.last_error or "")
    assert "shpat_wrong" not in (connected.connector.last_error or "")

    async with running_workers(client, sessions, settings):
        with pytest.raises(WorkflowFailureError) as failure:
            await sync(client, connected.connector.id, task_queue)
    assert error_type(failure.value) == ErrorType.CONNECTOR_NOT_ACTIVE
    assert await orders_of(sessions, connected.tenant.id) == {}
    [execution] = await executions_of(sessions, connected.tenant.id)
    assert execution.status is ModuleExecutionStatus.FAILED
    assert "not active" in (execution.error or "")


async def test_a_token_revoked_in_the_shop_fails_the_sync_and_rotation_mends_the_connector(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    shop.tokens = {"shpat_new_token_after_rotation"}
    async with running_workers(client, sessions, settings):
        with pytest.raises(WorkflowFailureError) as failure:
            await sync(client, connected.connector.id, task_queue)
        assert error_type(failure.value) == ErrorType.INVALID_CREDENTIALS
        broken = await connector_row(sessions, connected.connector.id)
        assert broken.status is ConnectorStatus.ERROR
        assert "HTTP 401" in (broken.last_error or "")
        assert await orders_of(sessions, connected.tenant.id) == {}

        rotated = await connected.service.rotate(
            connected.connector.id, {"access_token": "shpat_new_token_after_rotation"}
        )
        assert rotated.status is ConnectorStatus.ACTIVE and rotated.last_error is None
        result = await sync(client, connected.connector.id, task_queue)

    assert result.status is ModuleExecutionStatus.SUCCEEDED
    assert len(await orders_of(sessions, connected.tenant.id)) == 12
    statuses = [e.status for e in await executions_of(sessions, connected.tenant.id)]
    assert statuses == [ModuleExecutionStatus.FAILED, ModuleExecutionStatus.SUCCEEDED]


async def test_an_apps_client_credentials_get_tokens_refreshed_before_they_expire(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    shop.tokens, shop.apps = set(), {"app-client-id": "app-client-secret"}
    app = {"client_id": "app-client-id", "client_secret": "app-client-secret"}
    connected = await connect_shop(sessions, settings, client, shop, credentials=app)
    assert connected.connector.status is ConnectorStatus.ACTIVE
    assert shop.grants == 1
    [first_token] = shop.tokens

    async with sessions() as session:
        stored = (
            await session.exec(
                select(ConnectorCredential).where(
                    ConnectorCredential.connector_id == connected.connector.id,
                    ConnectorCredential.field == "access_token",
                )
            )
        ).one()
    assert stored.expires_at is not None and first_token.encode() not in stored.ciphertext

    async with running_workers(client, sessions, settings):
        first = await sync(client, connected.connector.id, task_queue)
        assert (first.status, shop.grants) == (ModuleExecutionStatus.SUCCEEDED, 1)  # reused
        # A day later: the stored token has expired, and the shop no longer takes it.
        async with sessions() as session, session.begin():
            await session.exec(
                text(
                    "UPDATE connector_credentials SET expires_at = now() - interval '1 minute' "
                    "WHERE connector_id = :id AND field = 'access_token'"
                ).bindparams(id=connected.connector.id)
            )
        shop.tokens.discard(first_token)
        shop.add_order()
        await shop.settle()
        second = await sync(client, connected.connector.id, task_queue)
        history = await client.get_workflow_handle(
            order_sync_workflow_id(connected.connector.id)
        ).fetch_history()

    assert second.status is ModuleExecutionStatus.SUCCEEDED and shop.grants == 2
    assert len(await orders_of(sessions, connected.tenant.id)) == 13
    raw = history.to_json()
    assert all(secret not in raw for secret in [*shop.tokens, "app-client-secret"])
    assert (await connector_row(sessions, connected.connector.id)).status is ConnectorStatus.ACTIVE


async def test_a_wrong_client_secret_leaves_the_connector_in_error_without_echoing_it(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    shop.apps = {"app-client-id": "app-client-secret"}
    wrong = {"client_id": "app-client-id", "client_secret": "not-the-secret"}
    connected = await connect_shop(
        sessions, commerce_settings(task_queue, tmp_path), client, shop, credentials=wrong
    )
    assert connected.connector.status is ConnectorStatus.ERROR
    assert "client credentials" in (connected.connector.last_error or "")
    assert "not-the-secret" not in (connected.connector.last_error or "")
    assert shop.grants == 0


async def test_disable_and_enable_follow_the_transitions(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    disabled = await connected.service.disable(connected.connector.id)
    assert disabled.status is ConnectorStatus.DISABLED
    # A test of a disabled connector does not switch it back on.
    assert (await connected.service.test(connected.connector.id)).status is ConnectorStatus.DISABLED
    async with running_workers(client, sessions, settings):
        with pytest.raises(WorkflowFailureError) as failure:
            await sync(client, connected.connector.id, task_queue)
    assert error_type(failure.value) == ErrorType.CONNECTOR_NOT_ACTIVE
    assert (await connected.service.enable(connected.connector.id)).status is ConnectorStatus.ACTIVE


async def test_creating_a_connector_refuses_what_cannot_work_with_typed_errors(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    service, tenant = connected.service, connected.tenant
    cases = [
        ({"tenant_id": uuid.uuid4()}, ErrorType.UNKNOWN_TENANT),
        ({"credentials": {}}, ErrorType.INVALID_CONNECTOR_CONFIG),
        ({"config": {"shop_url": "ftp://shop"}}, ErrorType.INVALID_CONNECTOR_CONFIG),
        ({"kind": ConnectorKind.STRIPE}, ErrorType.INVALID_CONNECTOR_CONFIG),
        ({"project_id": uuid.uuid4()}, ErrorType.UNKNOWN_PROJECT),
    ]
    for change, expected in cases:
        arguments = {
            "tenant_id": tenant.id,
            "kind": ConnectorKind.SHOPIFY,
            "config": {"shop_url": shop.url},
            "credentials": {"access_token": TOKEN},
        } | change
        with pytest.raises(ConnectorError) as refused:
            await service.create(**arguments)  # type: ignore[arg-type]
        assert refused.value.error_type is expected, change
    with pytest.raises(ConnectorError) as missing:
        await service.test(uuid.uuid4())
    assert missing.value.error_type is ErrorType.CONNECTOR_NOT_FOUND


async def test_credentials_are_ciphertext_bound_to_their_row(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    first = await connect_shop(sessions, settings, client, shop)
    second = await connect_shop(sessions, settings, client, shop, token="shpat_second_shop")
    async with sessions() as session:
        connection = await session.connection()
        raw = (await connection.execute(text("SELECT * FROM connector_credentials"))).all()
    dump = repr(raw).encode()
    assert TOKEN.encode() not in dump and b"shpat_second_shop" not in dump

    # A ciphertext copied to another connector's row does not decrypt there.
    async with sessions() as session, session.begin():
        await (await session.connection()).execute(
            text(
                "UPDATE connector_credentials AS target SET nonce = src.nonce, "
                "ciphertext = src.ciphertext, key_id = src.key_id FROM connector_credentials src "
                "WHERE src.connector_id = :src AND target.connector_id = :dst"
            ),
            {"src": first.connector.id, "dst": second.connector.id},
        )
    tested = await second.service.test(second.connector.id)
    assert tested.status is ConnectorStatus.ERROR
    assert "does not decrypt" in (tested.last_error or "")


async def test_key_rotation_re_encrypts_every_credential_and_old_ones_decrypt_before_it(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    old_spec = key_spec("2026-01")
    settings = commerce_settings(task_queue, tmp_path, credential_keys=old_spec)
    connected = await connect_shop(sessions, settings, client, shop)

    ring = KeyRing.parse(f"2026-12:{KeyRing.new_key()},{old_spec}")
    assert ring.current == "2026-12"
    store = CredentialStore(sessions, ring)
    # Before rotation: written under the old key, readable by the new ring.
    assert await store.read(connected.connector) == {"access_token": TOKEN}
    assert await store.reencrypt_all() == 1
    assert await store.reencrypt_all() == 0
    async with sessions() as session:
        rows = (await session.exec(select(ConnectorCredential))).all()
    assert {row.key_id for row in rows} == {"2026-12"}
    # After it, the old key can go.
    new_only = KeyRing(keys={"2026-12": ring.keys["2026-12"]}, current="2026-12")
    assert await CredentialStore(sessions, new_only).read(connected.connector) == {
        "access_token": TOKEN
    }
    with pytest.raises(CredentialError, match="does not hold"):
        await CredentialStore(sessions, KeyRing.parse(old_spec)).read(connected.connector)


async def test_a_key_ring_that_cannot_work_is_refused_without_echoing_a_key() -> None:
    with pytest.raises(KeyRingError, match="32 bytes"):
        KeyRing.parse("k1:c2hvcnQ=")
    with pytest.raises(KeyRingError, match="not in the key ring"):
        KeyRing.parse(key_spec("k1"), "k2")
    with pytest.raises(KeyRingError, match="'id:base64-key'"):
        KeyRing.parse("no-colon-here")


async def test_a_sync_history_and_the_worker_logs_hold_no_token(
    client: Client,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    shop: ShopifyStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    caplog.set_level(logging.DEBUG)
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        first = await sync(client, connected.connector.id, task_queue)
        shop.tokens = {"shpat_other"}
        # Read up to a second after the first sync's end, so there is a window to ask the shop
        # about (a sync in the same whole second has none: see the test below).
        later = max(first.cursors.values()) + timedelta(seconds=1)
        with pytest.raises(WorkflowFailureError):
            await sync(client, connected.connector.id, task_queue, until=later)
    handle = client.get_workflow_handle(order_sync_workflow_id(connected.connector.id))
    history = await handle.fetch_history()
    # Payloads as stored (JSON inside the protobuf bytes), not base64 as in a JSON export.
    stored = b"".join(event.SerializeToString() for event in history.events)
    assert b"sync_window" in stored and b"InvalidCredentials" in stored  # the real history
    assert TOKEN.encode() not in stored and b"shpat_other" not in stored
    text_of_history = stored.decode(errors="replace")
    assert TOKEN not in caplog.text
    assert settings.credential_keys is not None
    for entry in settings.credential_keys.get_secret_value().split(","):
        assert entry.split(":", 1)[1] not in text_of_history + caplog.text


async def test_a_sync_with_no_second_left_to_read_does_not_ask_the_shop(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    """Shopify's timestamps are whole seconds: a sync whose end falls in the second its
    connector's cursor already reached has no window to read, so it completes without a call,
    even when the shop would refuse one; a second later it reads, and is refused."""
    settings = commerce_settings(task_queue, tmp_path)
    connected = await connect_shop(sessions, settings, client, shop)
    async with running_workers(client, sessions, settings):
        first = await sync(client, connected.connector.id, task_queue)
        shop.tokens = {"shpat_revoked"}
        calls = shop.calls
        reached = max(first.cursors.values())
        idle = await sync(
            client, connected.connector.id, task_queue, until=reached + timedelta(milliseconds=900)
        )
        assert shop.calls == calls
        assert all(c.fetched == 0 for c in idle.counts.values())
        assert idle.cursors == {} or max(idle.cursors.values()) == reached
        with pytest.raises(WorkflowFailureError) as refused:
            await sync(
                client, connected.connector.id, task_queue, until=reached + timedelta(seconds=1)
            )
        assert error_type(refused.value) == ErrorType.INVALID_CREDENTIALS


async def test_a_connector_of_one_tenant_never_writes_another_tenants_rows(
    client: Client, sessions: SessionFactory, task_queue: str, tmp_path: Path, shop: ShopifyStandIn
) -> None:
    other_shop = ShopifyStandIn(token="shpat_other_tenant", seed=99)
    other_shop.start()
    try:
        other_shop.seed(orders=5, customers=2)
        settings = commerce_settings(task_queue, tmp_path)
        mine = await connect_shop(sessions, settings, client, shop)
        theirs = await connect_shop(
            sessions,
            settings,
            client,
            other_shop,
            token="shpat_other_tenant",
            tenant=await make_tenant(sessions, name="Other Tenant"),
        )
        async with running_workers(client, sessions, settings):
            await sync(client, mine.connector.id, task_queue)
            await sync(client, theirs.connector.id, task_queue)
    finally:
        other_shop.stop()
    # Both shops number their orders alike: the same external ids live apart per tenant.
    assert set(await orders_of(sessions, mine.tenant.id)) == set(shop.orders)
    assert set(await orders_of(sessions, theirs.tenant.id)) == set(other_shop.orders)
    assert set(shop.orders) & set(other_shop.orders)
