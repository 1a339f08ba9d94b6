"""The model engine's parts on their own: the edit format on a real repository's commit, and
the client's typed failures against the local stand-in."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pygit2
import pytest
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError

from activities.change_engine import ChangeRequestInvalid
from activities.edit_format import EditFailed, apply_edits, parse_edits
from activities.git_store import Workspace, open_repository
from activities.model_client import ModelClient, ModelRefused, StreamBroken, brief
from infra.settings import Settings
from scripts.model_stand_in import SERVERS, Reply, RunningStandIn, StandIn, edit_block
from scripts.sample_repo import create_sample_repo
from tests.process_support import free_port
from workflows.contracts.errors import MODEL_UNAVAILABLE, ErrorType

ASYNC = pytest.mark.asyncio(loop_scope="session")


KEY = "sk-unit-key"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    r = open_repository(create_sample_repo(tmp_path / "repo"))
    head = r.revparse_single("main")
    assert isinstance(head, pygit2.Commit)
    return Workspace(r, head)


def test_a_block_replaces_text_that_matches_once(workspace: Workspace) -> None:
    answer = "Here:\n" + edit_block("config.json", '  "theme": "light",\n', '  "theme": "dark",\n')
    summary = apply_edits(workspace, parse_edits(answer), max_file_bytes=100_000)
    assert summary == ["Edited config.json."]
    assert '"theme": "dark"' in workspace.read("config.json")


def test_an_empty_search_creates_a_new_file_only(workspace: Workspace) -> None:
    apply_edits(
        workspace, parse_edits(edit_block("pages/faq.md", "", "# FAQ\n")), max_file_bytes=10_000
    )
    assert workspace.read("pages/faq.md") == "# FAQ\n"
    with pytest.raises(EditFailed, match="exists; SEARCH must quote"):
        apply_edits(
            workspace, parse_edits(edit_block("config.json", "", "{}\n")), max_file_bytes=10_000
        )


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("no blocks at all", "holds no SEARCH/REPLACE block"),
        (edit_block("config.json", "absent\n", "x\n"), "does not occur in config.json"),
        (edit_block("config.json", "false,\n", "x\n"), r"occurs \d+ times"),
        (edit_block("pages/none.md", "a\n", "b\n"), "does not exist; to create it"),
    ],
)
def test_an_edit_that_does_not_apply_says_why(
    workspace: Workspace, answer: str, reason: str
) -> None:
    with pytest.raises(EditFailed, match=reason):
        apply_edits(workspace, parse_edits(answer), max_file_bytes=100_000)


@pytest.mark.parametrize("path", ["../x", ".git/HEAD", "a/../../x", "sub/.GIT/config", "/abs"])
def test_paths_outside_the_tree_are_refused(workspace: Workspace, path: str) -> None:
    with pytest.raises(ChangeRequestInvalid, match="not a file path inside the repository"):
        apply_edits(workspace, parse_edits(edit_block(path, "", "x\n")), max_file_bytes=100_000)


def test_binary_content_and_oversized_files_are_refused(workspace: Workspace) -> None:
    with pytest.raises(ChangeRequestInvalid, match="binary content"):
        apply_edits(workspace, parse_edits(edit_block("a.bin", "", "\0\n")), max_file_bytes=1000)
    with pytest.raises(ChangeRequestInvalid, match="larger than 100 bytes"):
        apply_edits(
            workspace,
            parse_edits(edit_block("check.py", "import json\n", "x\n")),
            max_file_bytes=100,
        )


@pytest.fixture
def served() -> Iterator[tuple[StandIn, Settings]]:
    stand_in = StandIn(api_key=KEY)
    server = RunningStandIn(stand_in)
    settings = Settings(
        model_base_url=server.base_url,
        model_name=stand_in.model,
        model_api_key=SecretStr(KEY),
        model_timeout_seconds=5,
    )
    yield stand_in, settings
    server.stop()


MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("server", sorted(SERVERS))
@ASYNC
async def test_an_answer_carries_the_usage_the_server_reported_whatever_it_streams(
    served: tuple[StandIn, Settings], server: str
) -> None:
    # llama-cpp-python's server streams no usage; every server reports it in a whole answer.
    stand_in, settings = served
    stand_in.server = server
    stand_in.script = [Reply("x" * 40, prompt_tokens=11, completion_tokens=7)]
    answer = await ModelClient(settings).complete(MESSAGES, max_tokens=100)
    assert (answer.text, answer.prompt_tokens, answer.completion_tokens) == ("x" * 40, 11, 7)
    assert answer.finish_reason == "stop"
    assert not stand_in.requests[0].get("stream")


@pytest.mark.parametrize("server", sorted(SERVERS))
@ASYNC
async def test_a_context_too_long_is_model_context_exceeded_in_every_servers_wording(
    served: tuple[StandIn, Settings], server: str
) -> None:
    stand_in, settings = served
    stand_in.server = server
    stand_in.script = [Reply(context_exceeded=True)]
    with pytest.raises(ModelRefused) as refused:
        await ModelClient(settings).complete(MESSAGES, max_tokens=10)
    assert refused.value.kind is ErrorType.MODEL_CONTEXT_EXCEEDED
    message = str(refused.value)
    assert "lower CHANGEFLOW_MODEL_CONTEXT_BYTES" in message and len(message) < 400


@pytest.mark.parametrize(
    ("server", "templated"),
    [("vllm", True), ("llama.cpp", False), ("llama-cpp-python", False), ("openai", None)],
)
@ASYNC
async def test_the_prompt_is_counted_by_the_servers_tokenizer_where_it_has_one(
    served: tuple[StandIn, Settings], server: str, templated: bool | None
) -> None:
    stand_in, settings = served
    stand_in.server = server
    messages = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "u" * 40}]
    counted = await ModelClient(settings).count_tokens(messages)
    if templated is None:
        assert counted is None  # no tokenizer endpoint: the engine counts bytes
    elif templated:
        assert counted == (stand_in.prompt_tokens(messages), True)
    else:
        assert counted == (110, False)  # the contents' tokens; the engine adds the template's


@ASYNC
async def test_an_endpoint_where_nothing_listens_is_retryable_model_unavailable() -> None:
    settings = Settings(
        model_base_url=f"http://127.0.0.1:{free_port()}/v1",
        model_timeout_seconds=2,
        model_unavailable_seconds=42,
    )
    client = ModelClient(settings)
    with pytest.raises(ApplicationError) as failure:
        await client.complete(MESSAGES, max_tokens=10)
    assert failure.value.type == MODEL_UNAVAILABLE and not failure.value.non_retryable
    assert failure.value.details == (42,)
    assert "does not answer" in failure.value.message
    assert await client.count_tokens(MESSAGES) is None


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (Reply(status=403, error_message="forbidden"), ErrorType.MODEL_AUTH_FAILED),
        (Reply(status=400, error_message="temperature is odd"), ErrorType.MODEL_REQUEST_REFUSED),
    ],
)
@ASYNC
async def test_refusals_are_typed_and_not_retried(
    served: tuple[StandIn, Settings], reply: Reply, kind: ErrorType
) -> None:
    stand_in, settings = served
    stand_in.script = [reply]
    with pytest.raises(ModelRefused) as refused:
        await ModelClient(settings).complete(MESSAGES, max_tokens=10)
    assert refused.value.kind is kind
    assert stand_in.calls == 1  # max_retries=0: the SDK did not retry


@ASYNC
async def test_an_unknown_model_is_model_not_found(served: tuple[StandIn, Settings]) -> None:
    _, settings = served
    client = ModelClient(settings.model_copy(update={"model_name": "no-such-model"}))
    with pytest.raises(ModelRefused, match="CHANGEFLOW_MODEL_NAME") as refused:
        await client.complete(MESSAGES, max_tokens=10)
    assert refused.value.kind is ErrorType.MODEL_NOT_FOUND


@pytest.mark.parametrize(("status", "after"), [(429, "7"), (503, None)])
@ASYNC
async def test_busy_servers_are_retryable_with_their_retry_after(
    served: tuple[StandIn, Settings], status: int, after: str | None
) -> None:
    stand_in, settings = served
    stand_in.script = [Reply(status=status, error_message="busy", retry_after=after)]
    with pytest.raises(ApplicationError) as failure:
        await ModelClient(settings).complete(MESSAGES, max_tokens=10)
    assert failure.value.type == MODEL_UNAVAILABLE and not failure.value.non_retryable
    assert failure.value.next_retry_delay == (timedelta(seconds=7) if after else None)


@ASYNC
async def test_a_connection_cut_mid_answer_is_broken(served: tuple[StandIn, Settings]) -> None:
    stand_in, settings = served
    stand_in.script = [Reply("x" * 100, break_after_chunks=0)]
    with pytest.raises(StreamBroken):
        await ModelClient(settings).complete(MESSAGES, max_tokens=100)


def test_a_long_server_message_is_cut_at_a_sentence_never_mid_word() -> None:
    words = "The request is long. " * 20 + "Try a shorter one."
    cut = brief(words, limit=100)
    assert len(cut) <= 100 and cut.endswith("long.")
    assert brief("word " * 60, limit=50).endswith("word …")


@ASYNC
async def test_an_answer_longer_than_max_tokens_is_cut_with_finish_reason_length(
    served: tuple[StandIn, Settings],
) -> None:
    stand_in, settings = served
    stand_in.script = [Reply("y" * 400)]
    answer = await ModelClient(settings).complete(MESSAGES, max_tokens=10)
    assert (answer.text, answer.finish_reason, answer.completion_tokens) == ("y" * 40, "length", 10)
