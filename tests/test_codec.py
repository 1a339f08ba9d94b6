"""Payload encryption: what Temporal stores is ciphertext, what our clients and the codec server
hand back is the plaintext, and keys rotate without losing old histories."""

import asyncio
import base64
import json
import os
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from sqlmodel import select
from structlog.testing import capture_logs
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from client.connection import connect
from client.lifecycle import LifecycleClient
from infra import codec as codec_module
from infra.codec import (
    DEVELOPMENT_KEY_RING,
    ENCRYPTED_ENCODING,
    EncryptionCodec,
    PayloadDecryptionError,
    data_converter,
    payload_key_ring,
)
from infra.keyring import KeyRing
from infra.settings import ConfigurationError, RuntimeEnv, Settings
from models.db import SessionFactory
from models.lifecycle import DeploymentPlan
from tests.conftest import DATA_CONVERTER
from tests.lifecycle_support import human_policy, make_shop, plan_awaiting_approval, submit
from tests.process_support import clean_environment, free_port
from tests.temporal_cli import CodecEndpoint
from tests.workers import running_workers
from workers.devstack import embedded_stack, port_open
from workers.registry import workflows
from workflows.contracts.errors import ErrorType, refused
from workflows.contracts.ids import prompt_request_workflow_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parent.parent
# Distinctive words: the rule engine writes them into the diff, its summary and the status.
SECRET_WORDS = "Quokka Lantern Emporium"
PROMPT = f"set store_name to {SECRET_WORDS}"
REASON = "Marmoset budget frozen until spring"


def plaintext(value: object) -> Payload:
    return pydantic_data_converter.payload_converter.to_payloads([value])[0]


async def test_a_payload_is_sealed_under_the_current_key_and_opens_to_the_same_payload() -> None:
    codec = EncryptionCodec(KeyRing.parse(f"k1:{KeyRing.new_key()}"))
    original = plaintext({"prompt": PROMPT})

    [sealed] = await codec.encode([original])
    [opened] = await codec.decode([sealed])

    assert sealed.metadata["encoding"] == ENCRYPTED_ENCODING
    assert sealed.metadata["encryption-key-id"] == b"k1"
    assert SECRET_WORDS.encode() not in sealed.SerializeToString()
    assert opened == original


async def test_after_rotation_the_new_key_encodes_and_the_old_key_still_decodes() -> None:
    old_key, new_key = KeyRing.new_key(), KeyRing.new_key()
    before = EncryptionCodec(KeyRing.parse(f"2026-01:{old_key}"))
    [written_before] = await before.encode([plaintext("approved before the rotation")])
    after = EncryptionCodec(KeyRing.parse(f"2026-06:{new_key},2026-01:{old_key}"))

    [written_after] = await after.encode([plaintext("approved after")])
    opened = await after.decode([written_before, written_after])

    assert written_after.metadata["encryption-key-id"] == b"2026-06"
    assert [json.loads(p.data) for p in opened] == [
        "approved before the rotation",
        "approved after",
    ]
    with pytest.raises(PayloadDecryptionError, match="'2026-06'"):
        await before.decode([written_after])  # a worker not yet given the new key says which


async def test_an_unknown_key_id_or_a_tampered_payload_is_a_clear_error() -> None:
    codec = EncryptionCodec(KeyRing.parse(f"current:{KeyRing.new_key()}"))
    [sealed] = await codec.encode([plaintext(PROMPT)])
    unknown = Payload(
        metadata={**sealed.metadata, "encryption-key-id": b"retired"}, data=sealed.data
    )
    tampered = Payload(metadata=sealed.metadata, data=sealed.data[:-1] + b"\0")

    with pytest.raises(PayloadDecryptionError) as no_key:
        await codec.decode([unknown])
    with pytest.raises(PayloadDecryptionError, match="does not decrypt"):
        await codec.decode([tampered])
    assert "'retired'" in str(no_key.value) and "CHANGEFLOW_PAYLOAD_KEYS" in str(no_key.value)
    assert PROMPT not in str(no_key.value)


async def test_a_plaintext_payload_passes_through_decoding() -> None:
    codec = EncryptionCodec(DEVELOPMENT_KEY_RING)
    original = plaintext({"user_id": str(uuid.uuid4())})
    assert await codec.decode([original]) == [original]


async def test_without_keys_development_uses_the_documented_ring_and_warns_once(
    client: Client,
) -> None:
    settings = Settings(temporal_address=client.service_client.config.target_host)
    codec_module._warn_development_key_ring.cache_clear()
    with capture_logs() as logs:
        clients = [await connect(settings) for _ in range(3)]
    [sealed] = await clients[0].data_converter.encode([PROMPT])

    assert payload_key_ring(settings) is DEVELOPMENT_KEY_RING
    assert sealed.metadata["encryption-key-id"] == DEVELOPMENT_KEY_RING.current.encode()
    assert [entry["event"] for entry in logs] == ["payload_development_key_ring"]


async def test_production_without_keys_and_a_bad_key_ring_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="CHANGEFLOW_PAYLOAD_KEYS"):
        payload_key_ring(Settings(runtime_env=RuntimeEnv.PRODUCTION))
    with pytest.raises(ConfigurationError, match="32 bytes"):
        payload_key_ring(Settings(payload_keys="short:" + base64.b64encode(b"x").decode()))
    with pytest.raises(ConfigurationError, match="not in the key ring"):
        payload_key_ring(Settings(payload_keys=f"a:{KeyRing.new_key()}", payload_key_id="b"))
    configured = payload_key_ring(
        Settings(runtime_env=RuntimeEnv.PRODUCTION, payload_keys=f"p1:{KeyRing.new_key()}")
    )
    assert configured.current == "p1"


@pytest.mark.system
@pytest.mark.parametrize(
    ("module", "configured", "missing"),
    [
        ("workers", {}, "CHANGEFLOW_PAYLOAD_KEYS"),
        ("workers.codec_server", {}, "CHANGEFLOW_PAYLOAD_KEYS"),
        (
            "workers.codec_server",
            {"CHANGEFLOW_PAYLOAD_KEYS": f"p1:{KeyRing.new_key()}"},
            "CHANGEFLOW_CODEC_SERVER_TOKEN",
        ),
    ],
)
async def test_a_production_process_without_keys_refuses_to_start_with_exit_code_2(
    module: str, configured: dict[str, str], missing: str, tmp_path: Path
) -> None:
    env = clean_environment(CHANGEFLOW_ENV="production", CHANGEFLOW_DATA_DIR=str(tmp_path))
    env.update(configured)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, err = await process.communicate()
    stderr = err.decode()
    assert process.returncode == 2, stderr
    assert missing in stderr
    assert "p1:" not in stderr, "a configured key is never echoed"
    assert not os.listdir(tmp_path), "nothing was started"


async def test_a_lifecycles_history_holds_no_prompt_diff_or_reason_in_plaintext(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    task_queue: str,
    deploy_queue: str,
    tmp_path: Path,
) -> None:
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        request_id = await submit(lifecycle, shop, PROMPT)
        status, plan = await plan_awaiting_approval(lifecycle, request_id)
        await lifecycle.reject(
            request_id, user_id=shop.admins[0].id, content_hash=plan.content_hash, reason=REASON
        )
        outcome = await lifecycle.wait_for_outcome(request_id)
    async with sessions() as session:
        [stored_plan] = (await session.exec(select(DeploymentPlan))).all()
    history = await client.get_workflow_handle(
        prompt_request_workflow_id(request_id)
    ).fetch_history()
    raw = History(events=history.events).SerializeToString()

    # Our typed client reads it all back; the diff really names the words.
    assert SECRET_WORDS in plan.diff_summary or SECRET_WORDS in stored_plan.diff
    assert SECRET_WORDS in stored_plan.diff
    assert outcome.status.value == "rejected"
    assert status.plan is not None
    for text in (PROMPT, SECRET_WORDS, REASON, stored_plan.diff, plan.diff_summary):
        assert text.encode() not in raw, text
    # Search attributes are plaintext by design: lifecycles stay listable by tenant.
    assert str(shop.tenant.id).encode() in raw
    assert ENCRYPTED_ENCODING in raw
    # The encrypted history replays with the project's converter (raises on nondeterminism).
    await Replayer(workflows=workflows(), data_converter=DATA_CONVERTER).replay_workflow(history)


async def test_a_failure_message_and_stack_trace_are_encrypted_and_decode_back() -> None:
    converter = data_converter(Settings())
    try:
        raise ApplicationError(f"plan refused: {PROMPT}", type="PolicyRefused")
    except ApplicationError as exc:
        failure = Failure()
        await converter.encode_failure(exc, failure)

    stored = failure.SerializeToString()  # what the history holds
    decoded = await converter.decode_failure(failure)

    assert SECRET_WORDS.encode() not in stored
    assert Failure.FromString(stored).message == "Encoded failure"
    assert not Failure.FromString(stored).stack_trace
    assert failure.application_failure_info.type == "PolicyRefused"  # types stay readable
    assert isinstance(decoded, ApplicationError) and SECRET_WORDS in decoded.message


async def test_a_typed_refusal_keeps_its_message_readable_and_its_stack_trace_encrypted() -> None:
    converter = data_converter(Settings())
    try:
        raise refused(ErrorType.STALE_PLAN_HASH, "plan hash 0123456789ab is stale")
    except ApplicationError as exc:
        failure = Failure()
        await converter.encode_failure(exc, failure)

    assert failure.message == "plan hash 0123456789ab is stale"
    assert not failure.stack_trace and b"test_codec.py" not in failure.SerializeToString()
    assert failure.encoded_attributes.metadata["encoding"] == ENCRYPTED_ENCODING


def payloads_json(*payloads: Payload) -> dict[str, object]:
    return json_format.MessageToDict(Payloads(payloads=list(payloads)))


async def test_the_codec_server_decodes_for_a_caller_with_the_token(
    codec_endpoint: CodecEndpoint,
) -> None:
    [sealed] = await EncryptionCodec(DEVELOPMENT_KEY_RING).encode([plaintext({"prompt": PROMPT})])
    untouched = plaintext("already plain")
    auth = {"Authorization": f"Bearer {codec_endpoint.token}"}
    async with httpx.AsyncClient(base_url=codec_endpoint.url) as http:
        decoded = await http.post("/decode", json=payloads_json(sealed, untouched), headers=auth)
        encoded = await http.post("/encode", json=payloads_json(untouched), headers=auth)

    assert decoded.status_code == 200, decoded.text
    opened = json_format.ParseDict(decoded.json(), Payloads()).payloads
    assert json.loads(opened[0].data) == {"prompt": PROMPT}
    assert opened[0].metadata["encoding"] == b"json/plain"
    assert opened[1] == untouched
    assert encoded.status_code == 200, encoded.text
    [resealed] = json_format.ParseDict(encoded.json(), Payloads()).payloads
    assert resealed.metadata["encoding"] == ENCRYPTED_ENCODING
    assert await EncryptionCodec(DEVELOPMENT_KEY_RING).decode([resealed]) == [untouched]


async def test_the_codec_server_refuses_a_missing_or_bad_token_and_bad_input(
    codec_endpoint: CodecEndpoint,
) -> None:
    [sealed] = await EncryptionCodec(DEVELOPMENT_KEY_RING).encode([plaintext(PROMPT)])
    body = payloads_json(sealed)
    async with httpx.AsyncClient(base_url=codec_endpoint.url) as http:
        missing = await http.post("/decode", json=body)
        wrong = await http.post("/decode", json=body, headers={"Authorization": "Bearer nope"})
        basic = await http.post(
            "/decode", json=body, headers={"Authorization": codec_endpoint.token}
        )
        auth = {"Authorization": f"Bearer {codec_endpoint.token}"}
        garbage = await http.post("/decode", content=b"{not json", headers=auth)
        foreign = await EncryptionCodec(KeyRing.parse(f"elsewhere:{KeyRing.new_key()}")).encode(
            [plaintext(PROMPT)]
        )
        unknown_key = await http.post("/decode", json=payloads_json(*foreign), headers=auth)
        elsewhere = await http.post("/nothing-here", json=body, headers=auth)

    assert [missing.status_code, wrong.status_code, basic.status_code] == [401, 401, 401]
    assert all(PROMPT not in r.text for r in (missing, wrong, basic))
    assert garbage.status_code == 400
    assert unknown_key.status_code == 400 and "'elsewhere'" in unknown_key.json()["error"]
    assert elsewhere.status_code == 404


async def test_the_codec_server_answers_the_web_uis_cors_preflight_and_no_other_origin(
    codec_endpoint: CodecEndpoint,
) -> None:
    ui_origin = Settings().ui_url  # the embedded Web UI, the default allowed origin
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    async with httpx.AsyncClient(base_url=codec_endpoint.url) as http:
        allowed = await http.options("/decode", headers={"Origin": ui_origin, **preflight})
        other = await http.options(
            "/decode", headers={"Origin": "https://evil.example", **preflight}
        )
        refused = await http.post("/decode", json=payloads_json(), headers={"Origin": ui_origin})

    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ui_origin
    assert "POST" in allowed.headers["access-control-allow-methods"]
    allowed_headers = allowed.headers["access-control-allow-headers"]
    assert {"authorization", "content-type", "x-namespace"} <= {
        h.strip() for h in allowed_headers.split(",")
    }
    assert "access-control-allow-origin" not in other.headers
    # A 401 still carries CORS headers, so the Web UI can show why instead of a network error.
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ui_origin


@pytest.mark.system
async def test_the_embedded_stack_starts_the_codec_server_and_the_web_ui_decodes_through_it(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        dev_temporal_port=free_port(),
        dev_ui_port=free_port(),
        codec_server_port=free_port(),
    )
    [sealed] = await EncryptionCodec(DEVELOPMENT_KEY_RING).encode([plaintext({"prompt": PROMPT})])
    async with embedded_stack(settings, migrate=False) as stack, httpx.AsyncClient() as http:
        ui_settings = (await http.get(f"{settings.ui_url}/api/v1/settings")).json()
        # What the Web UI's browser code does with that endpoint: a preflight, then the POST.
        origin = {"Origin": settings.ui_url}
        preflight = await http.options(f"{settings.codec_server_url}/decode", headers=origin)
        decoded = await http.post(
            f"{settings.codec_server_url}/decode", json=payloads_json(sealed), headers=origin
        )
        started = list(stack.started)

    assert ui_settings["Codec"]["Endpoint"] == settings.codec_server_url
    assert started == ["temporal", "codec-server"]
    assert preflight.headers["access-control-allow-origin"] == settings.ui_url
    [opened] = json_format.ParseDict(decoded.json(), Payloads()).payloads
    assert json.loads(opened.data) == {"prompt": PROMPT}
    assert not port_open("127.0.0.1", settings.codec_server_port), "stopped with the stack"
