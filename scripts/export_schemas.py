"""Export the JSON Schemas of every workflow's public payloads to workflows/schemas/.

For each registered workflow the run input and result, the signals, queries and updates are
found by introspection, so a new workflow or handler is exported without editing this file.
`index.json` maps each workflow type to the schema files of its payloads; each payload model has
`<Model>.json`. A test (tests/test_schemas.py) fails when code and files disagree.

Usage: `python -m scripts.export_schemas` (writes), `--check` (exit 1 when files are stale).
"""

import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from temporalio import workflow

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "workflows" / "schemas"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models named by a type hint, looking inside unions and containers."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    if typing.get_origin(annotation) is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found.extend(_models_in(arg))
    return found


def _payloads(fn: Callable[..., Any]) -> tuple[list[str], list[str]]:
    """(argument model names, return model names) of a workflow method."""
    hints = typing.get_type_hints(fn)
    returns = _models_in(hints.pop("return", None))
    arguments = [m for hint in hints.values() for m in _models_in(hint)]
    return [m.__name__ for m in arguments], [m.__name__ for m in returns]


def collect(workflow_classes: list[type]) -> tuple[dict[str, Any], dict[str, type[BaseModel]]]:
    """The index of every workflow type and the models it names."""
    index: dict[str, Any] = {}
    models: dict[str, type[BaseModel]] = {}

    def note(fn: Callable[..., Any]) -> dict[str, list[str]]:
        hints = typing.get_type_hints(fn)
        for hint in hints.values():
            for model in _models_in(hint):
                known = models.setdefault(model.__name__, model)
                if known is not model:
                    raise ValueError(
                        f"two payload models are named {model.__name__}: "
                        f"{known.__module__} and {model.__module__}"
                    )
        arguments, returns = _payloads(fn)
        return {"input": arguments, "output": returns}

    for cls in workflow_classes:
        definition = workflow._Definition.must_from_class(cls)
        assert definition.run_fn is not None
        entry: dict[str, Any] = {"run": note(definition.run_fn)}
        for kind, handlers in (
            ("signals", definition.signals),
            ("queries", definition.queries),
            ("updates", definition.updates),
        ):
            named = {name: note(h.fn) for name, h in handlers.items() if name is not None}
            if named:
                entry[kind] = dict(sorted(named.items()))
        assert definition.name is not None, f"{cls.__name__} is a dynamic workflow"
        index[definition.name] = entry
    return dict(sorted(index.items())), dict(sorted(models.items()))


def render() -> dict[str, str]:
    """File name -> content of everything under workflows/schemas/."""
    from workers.registry import workflows

    index, models = collect(workflows())
    files = {
        f"{name}.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        for name, model in models.items()
    }
    files["index.json"] = json.dumps(index, indent=2) + "\n"
    return files


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Files that are missing, different or no longer produced."""
    expected = render()
    present = {p.name for p in directory.glob("*.json")} if directory.exists() else set()
    problems = [
        name
        for name, content in expected.items()
        if not (directory / name).exists() or (directory / name).read_text() != content
    ]
    problems += sorted(present - set(expected))
    return problems


def write(directory: Path = SCHEMA_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    expected = render()
    for old in directory.glob("*.json"):
        if old.name not in expected:
            old.unlink()
    for name, content in expected.items():
        (directory / name).write_text(content)


def main(argv: list[str]) -> int:
    if "--check" in argv:
        problems = stale()
        if problems:
            print(f"stale schemas (run python -m scripts.export_schemas): {', '.join(problems)}")
            return 1
        print("schemas are up to date")
        return 0
    write()
    print(f"wrote {len(render())} files to {SCHEMA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
