"""The exported JSON Schemas are the contract other services read: code and files must agree."""

import json
from pathlib import Path

from scripts.export_schemas import SCHEMA_DIR, render, stale, write
from workflows.contracts.lifecycle import ApproveRequest, PromptRequestInput


def test_exported_schemas_match_the_code() -> None:
    problems = stale()
    assert problems == [], (
        f"workflows/schemas is stale for {problems}; run `python -m scripts.export_schemas`"
    )


def test_a_changed_payload_model_makes_the_check_fail(tmp_path: Path) -> None:
    write(tmp_path)
    assert stale(tmp_path) == []
    schema = json.loads((tmp_path / "ApproveRequest.json").read_text())
    schema["properties"].pop("content_hash")
    (tmp_path / "ApproveRequest.json").write_text(json.dumps(schema))
    (tmp_path / "Retired.json").write_text("{}")
    assert stale(tmp_path) == ["ApproveRequest.json", "Retired.json"]


def test_the_index_names_every_handler_of_the_prompt_lifecycle() -> None:
    index = json.loads(render()["index.json"])
    lifecycle = index["PromptRequestWorkflow"]
    assert lifecycle["run"] == {"input": ["PromptRequestInput"], "output": ["PromptRequestResult"]}
    assert set(lifecycle["updates"]) == {"approve", "reject", "revise", "authorize_cancel"}
    assert lifecycle["queries"]["status"]["output"] == ["PromptRequestStatus"]
    assert lifecycle["signals"]["deployment_progress"]["input"] == ["DeploymentProgress"]
    for workflow_type in ("DeploymentWorkflow", "RollbackWorkflow"):
        assert workflow_type in index
    # Schemas validate what they describe: required fields are the model's required fields.
    approve = json.loads((SCHEMA_DIR / "ApproveRequest.json").read_text())
    assert set(approve["required"]) == {
        name for name, field in ApproveRequest.model_fields.items() if field.is_required()
    }
    start = json.loads((SCHEMA_DIR / "PromptRequestInput.json").read_text())
    assert set(start["properties"]) == set(PromptRequestInput.model_fields)
