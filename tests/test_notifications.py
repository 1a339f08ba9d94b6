"""Approval notifications: a tenant's webhook hears what waits for approval, a reminder before
the plan expires and how the request ended, signed; a receiver that is down never holds up or
fails the lifecycle. Against a local receiver (tests/webhook_receiver.py) that speaks HTTP."""

import json
import logging
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from activities.notifications import TenantWebhooks, new_signing_secret
from activities.webhook_signature import SignatureError, sign, verify_signature
from client.lifecycle import LifecycleClient
from infra.settings import Settings
from models import PromptStatus
from models.db import SessionFactory
from scripts.sample_repo import SAFE_PROMPT
from tests.cli_support import changeflow, ok
from tests.commerce_support import commerce_settings, connector_service, key_spec
from tests.lifecycle_support import Shop, human_policy, make_shop, plan_awaiting_approval, submit
from tests.webhook_receiver import WebhookReceiver, webhook_receiver
from tests.workers import running_workers
from workflows.contracts.errors import ErrorType, error_type
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.notifications import NOTIFICATION_WORKFLOW_TYPE

pytestmark = pytest.mark.asyncio(loop_scope="session")

REQUESTED, REMINDER, ENDED = "approval.requested", "approval.reminder", "request.ended"


async def with_webhook(
    sessions: SessionFactory, settings: Settings, client: Client, shop: Shop, url: str, secret: str
) -> None:
    webhooks = TenantWebhooks(sessions, connector_service(settings, sessions, client))
    await webhooks.set(shop.tenant.id, url=url, secret=secret)


async def approve_all(lifecycle: LifecycleClient, shop: Shop, request_id: uuid.UUID) -> None:
    _, plan = await plan_awaiting_approval(lifecycle, request_id)
    for admin in shop.admins:
        await lifecycle.approve(request_id, user_id=admin.id, content_hash=plan.content_hash)


async def histories(client: Client, request_id: uuid.UUID) -> list[Any]:
    """The lifecycle's history and those of the notification workflows it started."""
    lifecycle = await client.get_workflow_handle(
        prompt_request_workflow_id(request_id)
    ).fetch_history()
    found = [lifecycle]
    for event in lifecycle.events:
        if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            started = event.child_workflow_execution_started_event_attributes
            if started.workflow_type.name == NOTIFICATION_WORKFLOW_TYPE:
                handle = client.get_workflow_handle(started.workflow_execution.workflow_id)
                found.append(await handle.fetch_history())
    return found


def notification_children(history: Any) -> list[str]:
    return [
        e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
        and e.start_child_workflow_execution_initiated_event_attributes.workflow_type.name
        == NOTIFICATION_WORKFLOW_TYPE
    ]


async def test_approval_requested_arrives_signed_with_what_waits_then_the_end(
    client: Client,
    lifecycle: LifecycleClient,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = commerce_settings(task_queue, tmp_path)
    secret = new_signing_secret()
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    async with (
        webhook_receiver(secret) as receiver,
        running_workers(client, sessions, settings, deploy_task_queue=f"{task_queue}-deploy"),
    ):
        await with_webhook(sessions, settings, client, shop, receiver.url, secret)
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        waiting, plan = await plan_awaiting_approval(lifecycle, request_id)
        await receiver.wait_for(REQUESTED)
        await approve_all(lifecycle, shop, request_id)
        result = await lifecycle.wait_for_outcome(request_id)
        await receiver.wait_for(ENDED)
        found = await histories(client, request_id)

    assert result.status is PromptStatus.COMPLETED
    [requested] = receiver.of_type(REQUESTED)
    assert requested.verified and requested.path == "/hooks/changeflow"
    event = requested.event
    assert event["id"] == requested.event_id and event["type"] == REQUESTED
    assert event["tenant_id"] == str(shop.tenant.id)
    assert event["project_id"] == str(shop.project.id)
    assert event["prompt_request_id"] == str(request_id)
    workflow_id = prompt_request_workflow_id(request_id)
    assert event["web_ui_url"] == (
        f"{settings.ui_url}/namespaces/{client.namespace}/workflows/{workflow_id}"
    )
    approval = event["approval"]
    assert approval["plan_id"] == str(plan.plan_id)
    assert approval["summary"] == plan.diff_summary and approval["summary"]
    assert approval["risk_level"] == plan.risk_level.value
    assert approval["risk_reasons"] == plan.risk_reasons
    assert approval["token_estimate"] == plan.token_estimate == waiting.token_estimate
    # What changes, file by file: "set theme to dark" rewrites one line of config.json.
    assert approval["files"] == [
        {"path": "config.json", "status": "modified", "added": 1, "removed": 1}
    ]
    assert approval["changes_verification"] == []
    assert (approval["approvals_required"], approval["approvals_so_far"]) == (2, 0)
    assert plan.expires_at is not None
    assert approval["expires_at"] == plan.expires_at.isoformat().replace("+00:00", "Z")
    [ended] = receiver.of_type(ENDED)
    assert ended.verified and ended.event["ended"] == {"status": "completed", "reason": ""}
    assert (event["sequence"], ended.event["sequence"]) == (1, 2)
    assert ended.event_id != requested.event_id
    # Nothing but the two events: no reminder without the policy setting.
    assert [r.event_type for r in receiver.received] == [REQUESTED, ENDED]

    # A body changed on the way, or a request replayed later, does not verify.
    tampered = requested.body.replace(b'"approvals_so_far":0', b'"approvals_so_far":2')
    assert tampered != requested.body
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(secret, requested.signature, tampered)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature("whsec_another", requested.signature, requested.body)
    replayed = sign(secret, requested.body, timestamp=int(time.time()) - 3600)
    with pytest.raises(SignatureError, match="old"):
        verify_signature(secret, replayed, requested.body, tolerance=300)
    verify_signature(secret, requested.signature, requested.body, tolerance=300)

    # The secret is in no Temporal payload and no log line.
    assert len(found) == 3  # the lifecycle and its two notifications
    for history in found:
        assert secret not in json.dumps(history.to_json_dict())
    captured = capfd.readouterr()
    assert secret not in caplog.text + captured.out + captured.err


async def test_a_receiver_down_for_a_while_gets_one_event_after_retries(
    client: Client,
    lifecycle: LifecycleClient,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    secret = new_signing_secret()
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    # Down at first (connections refused), then two 503s once it is up.
    receiver = WebhookReceiver(secret=secret, fail_first=2)
    async with running_workers(
        client, sessions, settings, deploy_task_queue=f"{task_queue}-deploy"
    ):
        await with_webhook(sessions, settings, client, shop, receiver.url, secret)
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        # Approved and shipped while nobody hears about it: the lifecycle does not wait.
        await approve_all(lifecycle, shop, request_id)
        result = await lifecycle.wait_for_outcome(request_id)
        assert receiver.received == []
        await receiver.start()
        try:
            await receiver.wait_for(REQUESTED)
            await receiver.wait_for(ENDED)
        finally:
            await receiver.stop()

    assert result.status is PromptStatus.COMPLETED
    # Every attempt of one event carried the same id: one logical event, delivered once.
    by_id: dict[str, list[int]] = {}
    for request in receiver.received:
        by_id.setdefault(request.event_id, []).append(request.answered)
    assert len(by_id) == 2 and all(r.verified for r in receiver.received)
    assert sorted(answers.count(200) for answers in by_id.values()) == [1, 1]
    assert sum(answers.count(503) for answers in by_id.values()) == 2
    assert len(receiver.of_type(REQUESTED)) == 1


async def test_events_delivered_after_an_outage_carry_the_order_they_were_sent_in(
    client: Client,
    lifecycle: LifecycleClient,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    secret = new_signing_secret()
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    receiver = WebhookReceiver(secret=secret)
    async with running_workers(
        client, sessions, settings, deploy_task_queue=f"{task_queue}-deploy"
    ):
        await with_webhook(sessions, settings, client, shop, receiver.url, secret)
        # Two requests while the receiver is down: each has its events retried on their own.
        request_ids = [await submit(lifecycle, shop, SAFE_PROMPT) for _ in range(2)]
        for request_id in request_ids:
            await approve_all(lifecycle, shop, request_id)
            await lifecycle.wait_for_outcome(request_id)
        await receiver.start()
        try:
            await receiver.wait_for(REQUESTED, count=2)
            await receiver.wait_for(ENDED, count=2)
        finally:
            await receiver.stop()

    for request_id in request_ids:
        events = [
            r.event for r in receiver.delivered if r.event["prompt_request_id"] == str(request_id)
        ]
        # Whatever order they arrived in, the sequence restores the lifecycle's.
        assert sorted((e["sequence"], e["type"]) for e in events) == [(1, REQUESTED), (2, ENDED)]


async def test_a_receiver_down_for_good_does_not_hold_up_the_lifecycle(
    client: Client,
    lifecycle: LifecycleClient,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    secret = new_signing_secret()
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    never_up = WebhookReceiver(secret=secret)
    async with running_workers(
        client, sessions, settings, deploy_task_queue=f"{task_queue}-deploy"
    ):
        await with_webhook(sessions, settings, client, shop, never_up.url, secret)
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        await approve_all(lifecycle, shop, request_id)
        result = await lifecycle.wait_for_outcome(request_id)
        history = await client.get_workflow_handle(
            prompt_request_workflow_id(request_id)
        ).fetch_history()
        children = notification_children(history)
        # The deliveries go on by themselves, still retrying after the lifecycle completed.
        described = [await client.get_workflow_handle(c).describe() for c in children]

    assert result.status is PromptStatus.COMPLETED
    assert len(children) == 2
    assert [d.status for d in described] == [WorkflowExecutionStatus.RUNNING] * 2
    for child in children:
        await client.get_workflow_handle(child).terminate("test over")


async def test_a_webhook_that_refuses_with_a_4xx_is_not_retried(
    client: Client,
    lifecycle: LifecycleClient,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    secret = new_signing_secret()
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    async with (
        webhook_receiver(secret, status=410) as receiver,
        running_workers(client, sessions, settings, deploy_task_queue=f"{task_queue}-deploy"),
    ):
        await with_webhook(sessions, settings, client, shop, receiver.url, secret)
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        await plan_awaiting_approval(lifecycle, request_id)
        history = await client.get_workflow_handle(
            prompt_request_workflow_id(request_id)
        ).fetch_history()
        [child] = notification_children(history)
        with pytest.raises(WorkflowFailureError) as failure:
            await client.get_workflow_handle(child).result()
        status = await lifecycle.status(request_id)
        await lifecycle.cancel(request_id, reason="test over")
        await lifecycle.wait_for_outcome(request_id)

    assert error_type(failure.value) == ErrorType.WEBHOOK_REJECTED
    assert [r.answered for r in receiver.received if r.event_type == REQUESTED] == [410]
    assert status.status is PromptStatus.AWAITING_APPROVAL  # the lifecycle is unaffected


async def test_a_reminder_comes_before_expiry_then_the_request_ended_expired(
    own_time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, tmp_path: Path
) -> None:
    time_skipping_env = own_time_skipping_env
    client = time_skipping_env.client
    queue = f"remind-{uuid.uuid4()}"
    settings = commerce_settings(queue, tmp_path)
    secret = new_signing_secret()
    shop = await make_shop(
        sessions, tmp_path, policy=human_policy(plan_ttl_seconds=3600, reminder_before_seconds=600)
    )
    lifecycle = LifecycleClient(client, task_queue=queue, deploy_task_queue=f"{queue}-deploy")
    async with (
        webhook_receiver(secret) as receiver,
        running_workers(client, sessions, settings, deploy_task_queue=f"{queue}-deploy"),
    ):
        await with_webhook(sessions, settings, client, shop, receiver.url, secret)
        request_id = await submit(lifecycle, shop, SAFE_PROMPT)
        _, plan = await plan_awaiting_approval(lifecycle, request_id)
        await receiver.wait_for(REQUESTED)
        await time_skipping_env.sleep(timedelta(minutes=50, seconds=1))
        await receiver.wait_for(REMINDER)
        assert receiver.of_type(ENDED) == []
        await time_skipping_env.sleep(timedelta(minutes=10))
        result = await lifecycle.wait_for_outcome(request_id)
        await receiver.wait_for(ENDED)
        history = await client.get_workflow_handle(
            prompt_request_workflow_id(request_id)
        ).fetch_history()

    assert result.status is PromptStatus.EXPIRED
    assert [r.event_type for r in receiver.delivered] == [REQUESTED, REMINDER, ENDED]
    [reminder] = receiver.of_type(REMINDER)
    assert reminder.verified
    assert reminder.event["approval"]["plan_id"] == str(plan.plan_id)
    assert reminder.event["approval"]["approvals_so_far"] == 0
    [ended] = receiver.of_type(ENDED)
    assert ended.event["ended"]["status"] == "expired"
    assert "3600 seconds" in ended.event["ended"]["reason"]
    # Two timers fired: the reminder's, then the plan's expiry, not a moment early.
    fired = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED]
    assert len(fired) == 2 and plan.expires_at is not None
    reminded_at = fired[0].event_time.ToDatetime(tzinfo=plan.expires_at.tzinfo)
    assert reminded_at >= plan.expires_at - timedelta(seconds=600)
    assert reminded_at < plan.expires_at
    assert fired[1].event_time.ToDatetime(tzinfo=plan.expires_at.tzinfo) >= plan.expires_at


async def test_a_tenant_without_a_webhook_gets_nothing_and_starts_no_notification(
    client: Client,
    lifecycle: LifecycleClient,
    sessions: SessionFactory,
    task_queue: str,
    tmp_path: Path,
) -> None:
    settings = commerce_settings(task_queue, tmp_path)
    secret = new_signing_secret()
    never_set = await make_shop(sessions, tmp_path, policy=human_policy())
    removed = await make_shop(sessions, tmp_path, policy=human_policy(), name="Removed Shop")
    webhooks = TenantWebhooks(sessions, connector_service(settings, sessions, client))
    async with (
        webhook_receiver(secret) as receiver,
        running_workers(client, sessions, settings, deploy_task_queue=f"{task_queue}-deploy"),
    ):
        await webhooks.set(removed.tenant.id, url=receiver.url, secret=secret)
        await webhooks.remove(removed.tenant.id)
        ids = [await submit(lifecycle, shop, SAFE_PROMPT) for shop in (never_set, removed)]
        for shop, request_id in zip((never_set, removed), ids, strict=True):
            await approve_all(lifecycle, shop, request_id)
        results = [await lifecycle.wait_for_outcome(request_id) for request_id in ids]
        found = [await histories(client, request_id) for request_id in ids]

    assert [r.status for r in results] == [PromptStatus.COMPLETED] * 2
    assert receiver.received == []
    for [history] in found:  # the lifecycle's history only: no notification was started
        assert notification_children(history) == []
        assert "notify_tenant" not in json.dumps(history.to_json_dict())


async def test_notify_set_show_test_and_remove_from_the_command(
    env: dict[str, str],
    sessions: SessionFactory,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path)
    tenant = shop.tenant.slug
    # Without a key ring the secret cannot be stored encrypted: refused, nothing written.
    keyless = await changeflow(env, "notify", "set", "-t", tenant, "--url", "http://x", "--json")
    assert keyless.code == 1 and keyless.json["error"]["type"] == "CredentialUnavailable"
    assert (await ok(env, "notify", "show", "-t", tenant, "--json")).json is None
    env["CHANGEFLOW_CREDENTIAL_KEYS"] = key_spec("k1")
    async with webhook_receiver("unknown yet") as receiver:
        set_ = (
            await ok(env, "notify", "set", "--tenant", tenant, "--url", receiver.url, "--json")
        ).json
        secret = set_["signing_secret"]
        assert secret.startswith("whsec_") and set_["status"] == "pending"
        receiver.secret = secret
        shown = (await ok(env, "notify", "show", "--tenant", tenant, "--json")).json
        assert shown["url"] == receiver.url and "signing_secret" not in shown
        plain = await ok(env, "notify", "show", "--tenant", tenant)
        assert secret not in plain.out and "stored encrypted" in plain.out

        tested = (await ok(env, "notify", "test", "--tenant", tenant, "--json")).json
        assert tested["status"] == "active"
        [ping] = receiver.received
        assert ping.event_type == "ping" and ping.verified
        assert ping.event["tenant_id"] == str(shop.tenant.id)

        # A secret of the operator's choosing, not printed back; a receiver that refuses it.
        receiver.status = 401
        chosen = await ok(
            env, "notify", "set", "--tenant", tenant, "--url", receiver.url, "--secret", "s3cr3t-x"
        )
        assert "s3cr3t-x" not in chosen.out + chosen.err
        failed = await changeflow(env, "notify", "test", "--tenant", tenant, "--json")
        assert failed.code == 3 and failed.json["status"] == "error"
        assert "401" in failed.json["last_error"]
        assert verify_signature(
            "s3cr3t-x", receiver.received[-1].signature, receiver.received[-1].body
        )

        removed = (await ok(env, "notify", "remove", "--tenant", tenant, "--json")).json
        assert removed["status"] == "disabled"

    bad = await changeflow(env, "notify", "set", "--tenant", tenant, "--url", "ftp://x", "--json")
    assert bad.code == 1 and bad.json["error"]["type"] == "InvalidConnectorConfig"
    none = await changeflow(env, "notify", "test", "--tenant", "no-such-tenant", "--json")
    assert none.code == 1 and none.json["error"]["type"] == "UnknownTenant"
    policy = (
        await ok(
            env, "policy", "set", "--tenant", tenant, "--reminder-before-seconds", "900", "--json"
        )
    ).json
    assert policy["reminder_before_seconds"] == 900
    shown_policy = await ok(env, "policy", "show", "--tenant", tenant)
    assert "900 s before expiry" in shown_policy.out
    cleared = await ok(
        env, "policy", "set", "--tenant", tenant, "--reminder-before-seconds", "none", "--json"
    )
    assert cleared.json["reminder_before_seconds"] is None
