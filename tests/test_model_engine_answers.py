"""The corpus of answers in the layouts models actually write (tests/model_answers/): each is
applied to the sample repository's main as the model engine applies it, and must be accepted
(with the files it changes), sent back with its reason, or refused, as expectations.json says."""

import json
from pathlib import Path
from typing import Any

import pygit2
import pytest

from activities.change_engine import ChangeRequestInvalid
from activities.edit_format import EditFailed, apply_edits, parse_edits
from activities.git_store import Workspace, open_repository
from scripts.sample_repo import create_sample_repo

CORPUS = Path(__file__).parent / "model_answers"
EXPECTED: dict[str, dict[str, Any]] = {
    name: case
    for name, case in json.loads((CORPUS / "expectations.json").read_text()).items()
    if not name.startswith("_")
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> pygit2.Repository:
    return open_repository(create_sample_repo(tmp_path_factory.mktemp("corpus") / "repo"))


def workspace(r: pygit2.Repository) -> Workspace:
    head = r.revparse_single("main")
    assert isinstance(head, pygit2.Commit)
    return Workspace(r, head)


def test_every_answer_in_the_corpus_has_an_expectation() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.md")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_answer_of_the_corpus_is_accepted_retried_or_refused_as_expected(
    repo: pygit2.Repository, name: str
) -> None:
    case = EXPECTED[name]
    answer = (CORPUS / name).read_text()
    ws = workspace(repo)
    before = {path: ws.read(path) for path in ws.listing()}

    def apply() -> list[str]:
        return apply_edits(ws, parse_edits(answer, ws.listing()), max_file_bytes=100_000)

    if case["outcome"] == "accepted":
        apply()
        for path, line in case.get("changed", {}).items():
            assert line in ws.read(path), (path, ws.read(path))
        for path in case.get("deleted", []):
            assert not ws.exists(path)
        touched = {p for p in ws.edits if ws.edits[p] != before.get(p)}
        assert touched == set(case.get("changed", {})) | set(case.get("deleted", []))
        # Nothing else moved: every other file reads as it did.
        for path in set(before) - touched:
            assert ws.read(path) == before[path]
        assert "markdown" not in ws.listing() and "json" not in ws.listing()
    elif case["outcome"] == "retried":
        with pytest.raises(EditFailed) as failed:
            apply()
        assert case["reason"] in failed.value.reason
        assert case["summary"] in failed.value.summary
        assert len(failed.value.summary) <= 200 and "\n" not in failed.value.summary
    else:
        with pytest.raises(ChangeRequestInvalid) as refused:
            apply()
        assert case["reason"] in str(refused.value)
