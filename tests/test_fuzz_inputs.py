"""Hostile input, generated: every public input of the lifecycle (its JSON Schemas under
workflows/schemas/) and the ledger's amounts and keys. Each malformed value gets a typed refusal
(the contract's InvalidRequest or its prompt/reason rule; the ledger's LedgerError) and writes
no row; an unknown field is dropped, never carried on.

The contract layer is fuzzed where it decides (parse_input and the prompt/reason checks, what
the workflow and the typed client both run); a handful of hostile submissions go through the
typed client against a running worker; the ledger is fuzzed through its public methods on the
real database."""

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from sqlalchemy import text
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.ledger import MAX_AMOUNT, MAX_KEY_LENGTH, Ledger, LedgerError
from client.lifecycle import LifecycleClient, LifecycleRefused
from models.db import SessionFactory
from scripts.sample_repo import SAFE_PROMPT
from tests.lifecycle_support import make_shop
from tests.workers import running_workers
from workflows.contracts.deployment import RollbackRequest
from workflows.contracts.errors import ErrorType
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import (
    MAX_PROMPT_CHARS,
    WORKFLOW_TYPE,
    ApproveRequest,
    PromptRequestInput,
    RejectRequest,
    ReviseRequest,
    check_prompt,
    check_reason,
)
from workflows.contracts.submitted import parse_input

ASYNC = pytest.mark.asyncio(loop_scope="session")

SCHEMAS = Path(__file__).resolve().parents[1] / "workflows" / "schemas"
TYPED = {e.value for e in ErrorType}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Each public input, with the rules its receiver applies after decoding it.
Check = Callable[[Any], None]
PUBLIC_INPUTS: dict[str, tuple[type[BaseModel], list[Check]]] = {
    "PromptRequestInput": (PromptRequestInput, [lambda m: check_prompt(m.prompt)]),
    "ApproveRequest": (ApproveRequest, []),
    "RejectRequest": (RejectRequest, [lambda m: check_reason(m.reason)]),
    "ReviseRequest": (ReviseRequest, [lambda m: check_prompt(m.prompt)]),
    "RollbackRequest": (RollbackRequest, []),
}
# Free-text fields whose receiver bounds them (check_prompt; the schema's maxLength).
TEXT_LIMITS = {"prompt": MAX_PROMPT_CHARS}
# Text a person wrote, refused when blank (a rollback's reason is optional).
NOT_BLANK = {
    ("PromptRequestInput", "prompt"),
    ("ReviseRequest", "prompt"),
    ("RejectRequest", "reason"),
}


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def kind(prop: dict[str, Any]) -> tuple[str, bool]:
    """A property's (type or format, nullable)."""
    options = prop.get("anyOf", [prop])
    nullable = any(o.get("type") == "null" for o in options)
    (real,) = [o for o in options if o.get("type") != "null"]
    return real.get("format", real["type"]), nullable


def valid_value(name: str, prop: dict[str, Any]) -> Any:
    what, _ = kind(prop)
    if what == "uuid":
        return str(uuid.uuid4())
    return SAFE_PROMPT if name in ("prompt", "reason") else "x"


def valid_payload(name: str) -> dict[str, Any]:
    """Every property of the schema with a value its receiver accepts."""
    return {field: valid_value(field, prop) for field, prop in schema(name)["properties"].items()}


def refusal(name: str, payload: object) -> ApplicationError | None:
    """What the receiver of `name` answers: None when it accepts the payload."""
    model, checks = PUBLIC_INPUTS[name]
    try:
        parsed = parse_input(model, payload)
        for check in checks:
            check(parsed)
    except ApplicationError as err:
        return err
    return None


def not_a_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return True
    return False


WRONG_TYPES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.just("\x00"),
    st.builds(lambda s: f"{s}\x00{s}", st.text(max_size=10)),
    st.just("\u202e\ufeff\U0001f4a5" * 50),
)


@st.composite
def hostile_field(draw: st.DrawFn, name: str) -> tuple[str, object]:
    """A field of `name`'s schema and a value its schema or its receiver refuses."""
    properties = schema(name)["properties"]
    field = draw(st.sampled_from(sorted(properties)))
    what, nullable = kind(properties[field])
    bad = [WRONG_TYPES]
    if not nullable:
        bad.append(st.none())
    if what == "uuid":
        bad.append(HOSTILE_TEXT.filter(not_a_uuid))
    limit = properties[field].get("maxLength") or TEXT_LIMITS.get(field)
    if limit:
        bad.append(st.integers(1, 3).map(lambda n: "y" * (limit + n)))
        bad.append(st.just("\U0001f4a5" * (limit + 1)))
    if (name, field) in NOT_BLANK:
        bad.append(st.sampled_from(["", " ", "\n\t ", "\u3000"]))
    if what == "string":
        bad.append(st.builds(lambda s: f"{s}\x00", st.text(max_size=10)))
    return field, draw(st.one_of(bad))


@pytest.mark.parametrize("name", sorted(PUBLIC_INPUTS))
def test_the_schemas_name_every_field_of_the_contracts(name: str) -> None:
    model, _ = PUBLIC_INPUTS[name]
    assert set(schema(name)["properties"]) == set(model.model_fields)
    assert refusal(name, valid_payload(name)) is None


@pytest.mark.parametrize("name", sorted(PUBLIC_INPUTS))
@FUZZ
@given(data=st.data())
def test_a_hostile_field_is_a_typed_refusal(name: str, data: st.DataObject) -> None:
    payload = valid_payload(name)
    field, value = data.draw(hostile_field(name))
    payload[field] = value
    refused = refusal(name, payload)
    assert refused is not None, f"{name}.{field}={value!r} was accepted"
    assert refused.type in TYPED and refused.non_retryable
    # The refusal names the field, never echoes a huge value back.
    assert len(refused.message) < 2000


@pytest.mark.parametrize("name", sorted(PUBLIC_INPUTS))
@FUZZ
@given(data=st.data())
def test_a_missing_required_field_is_a_typed_refusal(name: str, data: st.DataObject) -> None:
    required = schema(name).get("required", [])
    payload = valid_payload(name)
    for field in data.draw(st.lists(st.sampled_from(required), min_size=1, unique=True)):
        del payload[field]
    refused = refusal(name, payload)
    assert refused is not None and refused.type == ErrorType.INVALID_REQUEST


@pytest.mark.parametrize("name", sorted(PUBLIC_INPUTS))
@FUZZ
@given(
    payload=st.one_of(WRONG_TYPES, st.none(), HOSTILE_TEXT),
)
def test_a_payload_that_is_no_object_is_a_typed_refusal(name: str, payload: object) -> None:
    refused = refusal(name, payload)
    assert refused is not None and refused.type == ErrorType.INVALID_REQUEST


@pytest.mark.parametrize("name", sorted(PUBLIC_INPUTS))
@FUZZ
@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=20), st.one_of(WRONG_TYPES, HOSTILE_TEXT), min_size=1
    )
)
def test_unknown_fields_are_dropped(name: str, extra: dict[str, object]) -> None:
    """Unknown fields are tolerated (older and newer callers) but never carried on."""
    model, _ = PUBLIC_INPUTS[name]
    known = set(model.model_fields)
    payload = valid_payload(name) | {k: v for k, v in extra.items() if k not in known}
    parsed = parse_input(model, payload)
    assert set(parsed.model_dump()) == known


# --- through the typed client, against a running worker -------------------------------------


async def count_rows(sessions: SessionFactory, *tables: str) -> dict[str, int]:
    async with sessions() as session:
        return {
            t: (await session.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()
            for t in tables
        }


LIFECYCLE_TABLES = ("prompt_requests", "deployment_plans", "approvals", "token_holds")
HOSTILE_PROMPTS = ["", "   ", "\x00", "set theme to dark\x00", "y" * (MAX_PROMPT_CHARS + 1)]
# Start inputs sent as plain JSON (a caller without the typed client), refused by the workflow.
HOSTILE_STARTS: list[dict[str, object]] = [
    *({"prompt": p} for p in HOSTILE_PROMPTS),
    {"prompt": 12},
    {"tenant_id": "not-a-uuid"},
    {"tenant_id": None},
    {"requested_by": str(uuid.UUID(int=0))},
]


@ASYNC
@pytest.mark.parametrize("prompt", HOSTILE_PROMPTS, ids=repr)
async def test_the_typed_client_refuses_hostile_prompts_before_sending(
    sessions: SessionFactory, lifecycle: LifecycleClient, tmp_path: Path, prompt: str
) -> None:
    shop = await make_shop(sessions, tmp_path)
    with pytest.raises(LifecycleRefused) as refused:
        await lifecycle.submit(
            tenant_id=shop.tenant.id,
            project_id=shop.project.id,
            user_id=shop.requester.id,
            prompt=prompt,
        )
    assert refused.value.error_type in TYPED


@ASYNC
@pytest.mark.parametrize("change", HOSTILE_STARTS, ids=repr)
async def test_a_running_worker_refuses_hostile_starts_and_writes_nothing(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    task_queue: str,
    deploy_queue: str,
    tmp_path: Path,
    change: dict[str, object],
) -> None:
    shop = await make_shop(sessions, tmp_path)
    request_id = uuid.uuid4()
    payload = {
        "prompt_request_id": str(request_id),
        "tenant_id": str(shop.tenant.id),
        "project_id": str(shop.project.id),
        "requested_by": str(shop.requester.id),
        "prompt": SAFE_PROMPT,
        "deploy_task_queue": deploy_queue,
    } | change
    before = await count_rows(sessions, *LIFECYCLE_TABLES)
    async with running_workers(
        client, sessions, task_queue=task_queue, deploy_task_queue=deploy_queue
    ):
        await client.start_workflow(
            WORKFLOW_TYPE, payload, id=prompt_request_workflow_id(request_id), task_queue=task_queue
        )
        with pytest.raises(LifecycleRefused) as refused:
            async with asyncio.timeout(60):
                await lifecycle.wait_for_outcome(request_id)
    assert refused.value.error_type in TYPED
    assert await count_rows(sessions, *LIFECYCLE_TABLES) == before


# --- the ledger ---------------------------------------------------------------------------

LEDGER_TABLES = ("token_transactions", "token_holds", "token_ledger_requests")
BAD_AMOUNTS = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=MAX_AMOUNT + 1, max_value=2**80),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.decimals(allow_nan=False, allow_infinity=False),
)
BAD_KEYS = st.one_of(
    st.just(""),
    st.sampled_from([" k", "k ", "\t", "\n"]),
    st.integers(min_value=-5, max_value=5),
    st.none(),
    st.builds(lambda s: f"k{s}\x00", st.text(max_size=10)),
    st.integers(1, 5).map(lambda n: "k" * (MAX_KEY_LENGTH + n)),
    st.lists(st.text(max_size=3), max_size=2),
)
GOOD_KEY = st.uuids().map(lambda u: f"fuzz:{u}")


@pytest_asyncio.fixture(loop_scope="session")
async def funded(sessions: SessionFactory, tmp_path: Path) -> tuple[Ledger, uuid.UUID, uuid.UUID]:
    """A ledger, a funded account and one active hold on it."""
    shop = await make_shop(sessions, tmp_path)
    ledger = Ledger(sessions)
    hold = await ledger.reserve(
        shop.account.id, 10, key=f"fuzz-hold:{uuid.uuid4()}", ttl=timedelta(hours=1)
    )
    return ledger, shop.account.id, hold.hold_id


def ledger_calls(
    ledger: Ledger, account_id: uuid.UUID, hold_id: uuid.UUID
) -> dict[str, Callable[[Any, Any], Any]]:
    """Each public method that takes an amount and a key."""
    return {
        "top_up": lambda amount, key: ledger.top_up(account_id, amount, key=key),
        # A grant's key is its period's: a bad key is a bad period.
        "grant": lambda amount, key: ledger.grant(account_id, amount=amount, period=key),
        "charge": lambda amount, key: ledger.charge(account_id, amount, key=key),
        "reserve": lambda amount, key: ledger.reserve(
            account_id, amount, key=key, ttl=timedelta(hours=1)
        ),
        "settle": lambda amount, key: ledger.settle(hold_id, amount, key=key),
        "adjust": lambda amount, key: ledger.adjust(account_id, amount, key=key),
    }


def allowed(method: str, amount: object) -> bool:
    """Amounts that are no mistake for this method: a grant without one takes the tier's, a
    settlement may charge nothing, an adjustment's delta may be negative."""
    whole = isinstance(amount, int) and not isinstance(amount, bool)
    return (
        (method == "grant" and amount is None)
        or (method == "settle" and whole and amount == 0)
        or (method == "adjust" and whole and amount != 0 and abs(amount) <= MAX_AMOUNT)
    )


async def assert_refused_without_rows(
    sessions: SessionFactory, call: Callable[[], Any], what: str
) -> None:
    before = await count_rows(sessions, *LEDGER_TABLES)
    with pytest.raises(LedgerError) as refused:
        await call()
    assert refused.value.error_type in TYPED, what
    assert await count_rows(sessions, *LEDGER_TABLES) == before, what


@ASYNC
@FUZZ
@given(data=st.data())
async def test_the_ledger_refuses_bad_amounts_and_writes_nothing(
    sessions: SessionFactory, funded: tuple[Ledger, uuid.UUID, uuid.UUID], data: st.DataObject
) -> None:
    ledger, account_id, hold_id = funded
    calls = ledger_calls(ledger, account_id, hold_id)
    method = data.draw(st.sampled_from(sorted(calls)))
    amount = data.draw(BAD_AMOUNTS)
    assume(not allowed(method, amount))
    key = "2026-01" if method == "grant" else data.draw(GOOD_KEY)
    await assert_refused_without_rows(
        sessions, lambda: calls[method](amount, key), f"{method}({amount!r})"
    )


@ASYNC
@FUZZ
@given(data=st.data())
async def test_the_ledger_refuses_bad_keys_and_writes_nothing(
    sessions: SessionFactory, funded: tuple[Ledger, uuid.UUID, uuid.UUID], data: st.DataObject
) -> None:
    ledger, account_id, hold_id = funded
    calls = ledger_calls(ledger, account_id, hold_id) | {
        "release": lambda _amount, key: ledger.release(hold_id, key=key)
    }
    method = data.draw(st.sampled_from(sorted(calls)))
    key = data.draw(BAD_KEYS)
    assume(not (method == "grant" and key is None))  # no period: the current month's grant
    await assert_refused_without_rows(
        sessions, lambda: calls[method](1, key), f"{method}(key={key!r})"
    )
