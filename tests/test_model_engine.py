"""The model engine through the real lifecycle: real workers, Temporal and PostgreSQL, and a
local stand-in of an OpenAI-compatible endpoint (scripts/model_stand_in.py) that counts its calls
and reports usage, so each charge can be compared with what the server reported."""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client

from activities.model_engine import input_bound
from client.lifecycle import LifecycleClient
from infra.settings import Settings
from models import ModelCallOutcome, PromptStatus
from models.db import SessionFactory
from scripts.model_stand_in import NO_EDIT, RunningStandIn, StandIn, edit_block
from scripts.model_stand_in import Reply as R
from tests.lifecycle_support import (
    FUNDS,
    Shop,
    balance,
    config_on,
    git,
    holds,
    human_policy,
    make_shop,
    plan_awaiting_approval,
    push_config,
    request_row,
    settlements,
    submit,
    wait_for_status,
)
from tests.model_engine_support import (
    ABOUT_LINE,
    API_KEY,
    THEME_DARK,
    decoded_payloads,
    model_calls,
    model_settings,
    reported_usage,
    use_model_engine,
)
from tests.process_support import free_port
from tests.workers import running_workers
from workflows.contracts.ids import prompt_request_workflow_id
from workflows.contracts.lifecycle import REPLANNED_ON_NEW_BASE, PromptRequestResult

pytestmark = pytest.mark.asyncio(loop_scope="session")

THEME_PROMPT = "Our shop should look darker: please switch the storefront to the dark theme."
ABOUT_PROMPT = "Tell visitors on the about page that we are open every day."
THEME_EDIT = edit_block("config.json", *THEME_DARK)
ABOUT_EDIT = edit_block("pages/about.md", *ABOUT_LINE)


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    model = StandIn(api_key=API_KEY)
    server = RunningStandIn(model)
    model.base_url = server.base_url  # type: ignore[attr-defined]
    yield model
    server.stop()


@pytest.fixture
def settings(stand_in: StandIn, task_queue: str, deploy_queue: str, tmp_path: Path) -> Settings:
    return model_settings(
        stand_in.base_url,  # type: ignore[attr-defined]
        task_queue,
        deploy_queue,
        tmp_path / "workspace",
    )


@pytest_asyncio.fixture
async def shop(sessions: SessionFactory, tmp_path: Path) -> Shop:
    shop = await make_shop(sessions, tmp_path)
    await use_model_engine(sessions, shop)
    return shop


@pytest_asyncio.fixture
async def workers(
    client: Client, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[None]:
    async with running_workers(client, sessions, settings):
        yield


async def outcome(lifecycle: LifecycleClient, request_id: uuid.UUID) -> PromptRequestResult:
    async with asyncio.timeout(60):
        return await lifecycle.wait_for_outcome(request_id)


async def charged(sessions: SessionFactory, shop: Shop) -> int:
    return sum(entry.amount for entry in await settlements(sessions, shop))


async def test_free_text_requests_ship_through_the_model_engine_and_accumulate_on_main(
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
) -> None:
    stand_in.script = [R(THEME_EDIT, when="dark theme"), R(ABOUT_EDIT, when="open every day")]

    first = await outcome(lifecycle, await submit(lifecycle, shop, THEME_PROMPT))
    second = await outcome(lifecycle, await submit(lifecycle, shop, ABOUT_PROMPT))

    assert (first.status, second.status) == (PromptStatus.COMPLETED, PromptStatus.COMPLETED)
    repo = shop.project.repo_url
    assert config_on(shop, "main")["theme"] == "dark"
    assert "open every day" in git(repo, "show", "main:pages/about.md")
    assert git(repo, "rev-parse", "main^{tree}") == git(repo, "rev-parse", "env/production^{tree}")
    # The second plan started from the first change: its context held the dark theme.
    assert '"theme": "dark"' in stand_in.requests[1]["messages"][1]["content"]
    # Charged exactly what the server reported, once per call, the rest of each hold released.
    usage = reported_usage(stand_in, [THEME_EDIT, ABOUT_EDIT])
    assert first.tokens_used + second.tokens_used == usage
    assert await charged(sessions, shop) == usage
    assert await balance(sessions, shop.account) == FUNDS - usage
    for request in (first, second):
        [call] = await model_calls(sessions, request.prompt_request_id)
        assert call.tokens_charged == call.prompt_tokens + call.completion_tokens > 0
        estimate = (await lifecycle.status(request.prompt_request_id)).token_estimate
        assert input_bound(stand_in.requests[0]["messages"]) + call.max_tokens <= estimate
    # Not streamed: every server reports usage in a whole answer.
    assert not any(body.get("stream") for body in stand_in.requests)
    assert stand_in.calls == 2  # applying never asked the model again


async def test_an_edit_that_does_not_apply_goes_back_with_its_reason_and_the_next_one_ships(
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
) -> None:
    wrong = edit_block("config.json", '  "theme": "blue",\n', '  "theme": "dark",\n')
    stand_in.script = [R(wrong, when="dark theme"), R(THEME_EDIT, when="did not apply")]

    result = await outcome(lifecycle, await submit(lifecycle, shop, THEME_PROMPT))

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert config_on(shop, "main")["theme"] == "dark"
    assert stand_in.calls == 2
    retry = stand_in.requests[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": wrong}
    assert "the SEARCH text does not occur in config.json" in retry[-1]["content"]
    assert result.tokens_used == reported_usage(stand_in, [wrong, THEME_EDIT])
    assert await charged(sessions, shop) == result.tokens_used


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../outside.txt", "is not a file path inside the repository"),
        (".git/config", "is not a file path inside the repository"),
        ("/etc/passwd", "is not a file path inside the repository"),
    ],
)
async def test_an_edit_of_a_path_outside_the_repository_fails_the_request_uncharged(
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
    path: str,
    why: str,
) -> None:
    stand_in.script = [R(edit_block(path, "", "owned\n"), times=5)]

    result = await outcome(lifecycle, await submit(lifecycle, shop, THEME_PROMPT))

    assert result.status is PromptStatus.FAILED
    assert why in result.reason
    assert stand_in.calls == 1  # refused, not argued with
    assert await holds(sessions, shop) == []
    assert await balance(sessions, shop.account) == FUNDS
    assert git(shop.project.repo_url, "branch", "--list", "changeflow/*") == ""


async def test_an_oversized_file_is_refused(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    settings: Settings,
) -> None:
    stand_in.script = [R(edit_block("pages/big.md", "", "x" * 1500 + "\n"))]
    strict = settings.model_copy(update={"model_max_file_bytes": 1000})

    async with running_workers(client, sessions, strict):
        result = await outcome(lifecycle, await submit(lifecycle, shop, THEME_PROMPT))

    assert result.status is PromptStatus.FAILED
    assert "pages/big.md would exceed 1000 bytes" in result.reason
    assert stand_in.calls == 1


async def test_a_broken_answer_is_charged_its_question_once_and_asked_again(
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
) -> None:
    stand_in.script = [R(THEME_EDIT, when="dark theme", break_after_chunks=0), R(THEME_EDIT)]

    result = await outcome(lifecycle, await submit(lifecycle, shop, THEME_PROMPT))

    assert result.status is PromptStatus.COMPLETED, result.reason
    broken, answered = await model_calls(sessions, result.prompt_request_id)
    assert broken.outcome is ModelCallOutcome.BROKEN
    # The server read the question; the answer never came: the question only, not the cap.
    question = input_bound(stand_in.requests[0]["messages"])
    assert broken.tokens_charged == question < question + broken.max_tokens
    assert answered.outcome is ModelCallOutcome.ANSWERED
    # The same question again: the broken call left nothing in the conversation.
    assert stand_in.requests[1]["messages"] == stand_in.requests[0]["messages"]
    reported = answered.prompt_tokens + answered.completion_tokens
    assert result.tokens_used == question + reported
    assert await charged(sessions, shop) == question + reported
    assert stand_in.calls == 2


async def test_usage_beyond_the_estimate_at_planning_is_the_price_of_the_first_approval(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    stand_in: StandIn,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # A server that counts far more tokens than the engine's bound assumes.
    stand_in.script = [R(THEME_EDIT, completion_tokens=90_000)]
    shop = await make_shop(sessions, tmp_path, policy=human_policy(), balance=200_000)
    await use_model_engine(sessions, shop)

    async with running_workers(client, sessions, settings):
        request_id = await submit(lifecycle, shop, THEME_PROMPT)
        _, plan = await plan_awaiting_approval(lifecycle, request_id, within=30)
        [call] = await model_calls(sessions, request_id)
        # The first approval asks for what the planning calls already used.
        assert plan.revision == 1 and plan.token_estimate == call.tokens_charged
        assert call.tokens_charged == call.prompt_tokens + 90_000
        assert [h.amount for h in await holds(sessions, shop)] == [plan.token_estimate]
        for admin in shop.admins[: plan.approvals_required]:
            await lifecycle.approve(request_id, user_id=admin.id, content_hash=plan.content_hash)
        result = await outcome(lifecycle, request_id)
        final = await lifecycle.status(request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert final.plan is not None and final.plan.revision == 1  # never sent back
    assert result.tokens_used == call.tokens_charged
    assert await charged(sessions, shop) == result.tokens_used
    assert stand_in.calls == 1


@pytest.mark.parametrize("server", ["llama-cpp-python", "vllm", "llama.cpp"])
async def test_servers_as_they_behave_charge_their_reported_usage_within_a_tight_hold(
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
    server: str,
) -> None:
    # llama-cpp-python streams no usage; all three count tokens at a tokenizer endpoint.
    stand_in.server = server
    stand_in.script = [R(ABOUT_EDIT, when="open every day")]

    request_id = await submit(lifecycle, shop, ABOUT_PROMPT)
    result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert result.tokens_used == reported_usage(stand_in, [ABOUT_EDIT])
    assert await charged(sessions, shop) == result.tokens_used
    estimate = (await lifecycle.status(request_id)).token_estimate
    # The hold is the server's own count of the question plus the answers allowed: at most 3x
    # what a one-line change uses, and never less than it.
    assert result.tokens_used <= estimate <= 3 * result.tokens_used, (estimate, result.tokens_used)


@pytest.mark.parametrize("server", ["vllm", "llama.cpp", "llama-cpp-python", "ollama"])
async def test_a_context_too_long_in_each_servers_words_fails_with_advice_and_no_hold(
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
    server: str,
) -> None:
    stand_in.server = server
    stand_in.script = [R(context_exceeded=True, times=3)]

    result = await outcome(lifecycle, await submit(lifecycle, shop, THEME_PROMPT))

    assert result.status is PromptStatus.FAILED
    assert result.reason.startswith("the request is longer than the model's context")
    assert result.reason.endswith("use a model with a longer context")
    assert stand_in.calls == 1
    assert await holds(sessions, shop) == []
    assert await balance(sessions, shop.account) == FUNDS


async def test_a_model_that_declines_is_reported_in_its_own_words(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
) -> None:
    stand_in.script = [R(NO_EDIT, times=5)]

    request = await submit(lifecycle, shop, THEME_PROMPT)
    result = await outcome(lifecycle, request)

    assert result.status is PromptStatus.FAILED
    assert result.reason == (
        "no edit of the model applied after 3 answer(s): the model made no edit; it answered: "
        "\u201cI cannot make that change.\u201d"
    )
    # The model itself was told the format again.
    assert "SEARCH/REPLACE" in stand_in.requests[1]["messages"][-1]["content"]
    assert await balance(sessions, shop.account) == FUNDS  # a failed plan is the platform's
    # The model's words reach the people through the encrypted details only: the history's
    # readable refusal message is ours.
    raw = Client(client.service_client, namespace=client.namespace)  # no codec
    handle = raw.get_workflow_handle(prompt_request_workflow_id(request))
    history = b"".join(e.SerializeToString() for e in (await handle.fetch_history()).events)
    assert b"no edit of the model applied after 3 answer(s)" in history
    assert b"cannot make that change" not in history


async def test_an_answer_in_aiders_layout_ships_to_the_file_it_names(
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
) -> None:
    answer = (Path(__file__).parent / "model_answers" / "bold_path_claude.md").read_text()
    stand_in.script = [R(answer, when="open every day")]

    result = await outcome(lifecycle, await submit(lifecycle, shop, ABOUT_PROMPT))

    assert result.status is PromptStatus.COMPLETED, result.reason
    repo = shop.project.repo_url
    assert "open every day" in git(repo, "show", "main:pages/about.md")
    changed = git(repo, "diff", "--name-only", f"{result.commit_sha}~1", result.commit_sha or "")
    assert changed == "pages/about.md"  # no file named after the fence's language tag
    assert stand_in.calls == 1


async def test_an_endpoint_where_nothing_listens_says_so_then_fails_model_unavailable(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    settings: Settings,
) -> None:
    down = settings.model_copy(
        update={
            "model_base_url": f"http://127.0.0.1:{free_port()}/v1",
            "model_unavailable_seconds": 15.0,
        }
    )
    async with running_workers(client, sessions, down):
        request_id = await submit(lifecycle, shop, THEME_PROMPT)
        retrying = await wait_for_status(
            lifecycle,
            request_id,
            lambda s: s.step.startswith("the model endpoint does not answer: attempt 2, next in"),
            within=30,
        )
        result = await outcome(lifecycle, request_id)

    assert retrying.status is PromptStatus.PLANNING
    assert retrying.reason == retrying.step  # `changeflow status` prints the reason
    assert result.status is PromptStatus.FAILED
    assert "does not answer" in result.reason and "(ModelUnavailable)" in result.reason
    assert result.reason.endswith("then submit again")
    row = await request_row(sessions, request_id)
    assert row is not None and row.status is PromptStatus.FAILED
    assert await holds(sessions, shop) == []
    assert await balance(sessions, shop.account) == FUNDS


async def test_every_call_is_capped_by_the_budget_and_a_cut_answer_is_sent_back(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    settings: Settings,
) -> None:
    long_answer = "Let me explain at length first. " * 40 + THEME_EDIT
    stand_in.script = [R(long_answer, when="dark theme"), R(THEME_EDIT, when="cut off")]
    small = settings.model_copy(update={"model_max_tokens": 100, "model_edit_attempts": 2})

    async with running_workers(client, sessions, small):
        result = await outcome(lifecycle, await submit(lifecycle, shop, THEME_PROMPT))
        estimate = (await lifecycle.status(result.prompt_request_id)).token_estimate

    assert result.status is PromptStatus.COMPLETED, result.reason
    first, second = stand_in.requests
    assert first["max_tokens"] == second["max_tokens"] == 100
    assert "the answer was cut off at 100 tokens" in second["messages"][-1]["content"]
    calls = await model_calls(sessions, result.prompt_request_id)
    assert calls[0].finish_reason == "length"
    # Each call's cap leaves room for what was charged before it and its own input.
    assert calls[0].tokens_charged + input_bound(second["messages"]) + 100 <= estimate


async def test_a_refused_api_key_fails_the_request_with_model_auth_failed_and_no_hold(
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
) -> None:
    stand_in.api_key = "sk-another-key"

    result = await outcome(lifecycle, await submit(lifecycle, shop, THEME_PROMPT))

    assert result.status is PromptStatus.FAILED
    assert "refused the API key" in result.reason and "CHANGEFLOW_MODEL_API_KEY" in result.reason
    assert await holds(sessions, shop) == []
    assert await balance(sessions, shop.account) == FUNDS
    assert stand_in.calls == 0  # refused before the stand-in counted a request


async def test_429_with_retry_after_is_retried_by_temporal_then_ships(
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
) -> None:
    stand_in.script = [
        R(status=429, error_message="Rate limit reached", retry_after="1"),
        R(THEME_EDIT),
    ]

    result = await outcome(lifecycle, await submit(lifecycle, shop, THEME_PROMPT))

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert stand_in.calls == 2
    [call] = await model_calls(sessions, result.prompt_request_id)  # the 429 cost nothing
    assert result.tokens_used == call.tokens_charged


async def test_the_api_key_prompt_and_answer_are_in_no_history_and_no_log(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    shop: Shop,
    stand_in: StandIn,
    workers: None,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = "a-marker-only-the-model-says"
    answer = f"{marker}\n{THEME_EDIT}"
    stand_in.script = [R(answer)]

    result = await outcome(lifecycle, await submit(lifecycle, shop, THEME_PROMPT))

    assert result.status is PromptStatus.COMPLETED, result.reason
    handle = client.get_workflow_handle(prompt_request_workflow_id(result.prompt_request_id))
    history = decoded_payloads((await handle.fetch_history()).to_json())
    assert "theme" in history  # the payloads were decoded
    assert API_KEY not in history and marker not in history
    captured = capsys.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert logs  # something was logged
    assert API_KEY not in logs and marker not in logs and "dark theme" not in logs


async def test_a_conflict_asks_the_model_again_on_the_new_base_holds_it_and_charges_that_plan(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    settings: Settings,
    stand_in: StandIn,
    tmp_path: Path,
) -> None:
    """Someone set the line the approved answer edits: the model is asked again on the new
    head (a call of the new revision, estimated and held), the new diff waits for approval, and
    the request ships charged what that revision's call cost."""
    shop = await make_shop(sessions, tmp_path, policy=human_policy())
    await use_model_engine(sessions, shop)
    stand_in.script = [
        R(THEME_EDIT, when="dark theme"),
        R(edit_block("config.json", '  "theme": "blue",\n', '  "theme": "dark",\n')),
    ]
    async with running_workers(client, sessions, settings):
        request_id = await submit(lifecycle, shop, THEME_PROMPT)
        _, approved = await plan_awaiting_approval(lifecycle, request_id, within=30)
        pushed = push_config(shop.project.repo_url, theme="blue")
        for admin in shop.admins:
            await lifecycle.approve(
                request_id, user_id=admin.id, content_hash=approved.content_hash
            )
        waiting = await wait_for_status(
            lifecycle,
            request_id,
            lambda s: (
                s.plan is not None
                and s.plan.revision == 2
                and s.status.value == "awaiting_approval"
            ),
            within=30,
        )
        assert waiting.reason.startswith(REPLANNED_ON_NEW_BASE), waiting.reason
        replanned = waiting.plan
        assert replanned is not None and stand_in.calls == 2
        # The new call's estimate is held beside the first.
        assert sum(h.amount for h in await holds(sessions, shop)) >= replanned.token_estimate
        for admin in shop.admins:
            await lifecycle.approve(
                request_id, user_id=admin.id, content_hash=replanned.content_hash
            )
        result = await outcome(lifecycle, request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert git(shop.project.repo_url, "rev-parse", f"{result.commit_sha}^") == pushed
    assert config_on(shop, "env/production")["theme"] == "dark"
    [first] = [c for c in await model_calls(sessions, request_id) if c.revision == 1]
    [second] = [c for c in await model_calls(sessions, request_id) if c.revision == 2]
    assert result.tokens_used == second.tokens_charged > 0
    assert await charged(sessions, shop) == result.tokens_used
    assert stand_in.calls == 2  # applying never asked the model again
    assert first.base_commit != second.base_commit == pushed
