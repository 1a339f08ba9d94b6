"""The built-in rule engine: a small set of instructions, one per line (or separated by `;`),
carried out as edits of a commit's files:

- `set <key> to <value>`: edit config.json; `<key>` may be dotted (`checkout.payment_provider`),
  `<value>` is read as JSON when it parses (`true`, `5`, `"x"`) and as text otherwise. A new
  key goes in sorted position among its object's keys.
- `add a page <name>`: create pages/<name>.md and list it in config.json's `pages` (in sorted
  position);
  `add a page <name> listing every product` also lists every product of products.json.
- `add a migration <name>`: the next numbered migrations/NNNN_<name>.sql (`drop_<table>` drops).
- `remove the <name> test` / `skip the <name> test`: delete or skip tests/test_<name>.py.
- anything else is recorded in docs/change-requests.md for a person to carry out.

Edits go to a `Workspace` (the base commit's files in memory, from activities.git_store).
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from activities.change_engine import ChangeRequestInvalid
from activities.git_store import Workspace
from activities.risk import TEST_PATH
from workflows.contracts.lifecycle import MAX_PROMPT_CHARS

CONFIG_FILE = "config.json"
PAGES_DIR = "pages"
PRODUCTS_FILE = "products.json"
CHANGE_NOTES_FILE = "docs/change-requests.md"
DEFAULT_MIGRATIONS_DIR = "migrations"


@dataclass
class Instruction:
    kind: str
    text: str
    args: dict[str, str]


_KEY = r"[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*"
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("set", re.compile(rf"^set\s+(?:the\s+)?(?P<key>{_KEY})\s+to\s+(?P<value>.+)$", re.I)),
    (
        "page",
        re.compile(
            r"^add\s+(?:a\s+|the\s+)?page\s+(?P<name>\S+)(?P<listing>\s+listing\s+every\s+product)?$",
            re.I,
        ),
    ),
    ("migration", re.compile(r"^add\s+(?:a\s+|the\s+)?migration\s+(?P<name>\S+)$", re.I)),
    (
        "remove_test",
        re.compile(r"^(?:remove|delete)\s+the\s+(?P<name>[\w -]+?)\s+tests?$", re.I),
    ),
    ("skip_test", re.compile(r"^skip\s+the\s+(?P<name>[\w -]+?)\s+tests?$", re.I)),
]


def parse_prompt(prompt: str) -> list[Instruction]:
    """Instructions of a prompt; lines that are no instruction become one change note."""
    if not prompt.strip():
        raise ChangeRequestInvalid("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ChangeRequestInvalid(
            f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are accepted"
        )
    if "\x00" in prompt:
        raise ChangeRequestInvalid("the prompt contains a NUL character")
    if not re.search(r"\w", prompt):
        raise ChangeRequestInvalid("the prompt contains no words")
    instructions: list[Instruction] = []
    loose: list[str] = []
    for raw in re.split(r"[\n;]+", prompt):
        line = re.sub(r"^(please\s+|and\s+|then\s+)+", "", raw.strip(), flags=re.I).rstrip(".!")
        if not line:
            continue
        for kind, pattern in _PATTERNS:
            if match := pattern.match(line):
                instructions.append(Instruction(kind, line, match.groupdict(default="")))
                break
        else:
            loose.append(raw.strip())
    if loose:
        instructions.append(Instruction("note", "\n".join(loose), {}))
    return instructions


def _slug(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.strip("'\"")


def _read_json(ws: Workspace, path: str) -> Any:
    try:
        return json.loads(ws.read(path))
    except ValueError:
        raise ChangeRequestInvalid(f"{path} is not valid JSON") from None


def _existing_key(node: dict[str, Any], key: str) -> str:
    """`key` as the file spells it when only its case differs ("Theme" finds "theme")."""
    if key in node:
        return key
    return next((k for k in node if k.lower() == key.lower()), key)


def _set_config(ws: Workspace, i: Instruction) -> str:
    config = _read_json(ws, CONFIG_FILE)
    if not isinstance(config, dict):
        raise ChangeRequestInvalid(f"{CONFIG_FILE} does not hold an object")
    *parents, leaf = i.args["key"].split(".")
    node: Any = config
    path: list[str] = []
    for part in parents:
        part = _existing_key(node, part)
        path.append(part)
        node = node.get(part)
        if not isinstance(node, dict):
            raise ChangeRequestInvalid(f"{i.args['key']}: {part} is not a section of {CONFIG_FILE}")
    leaf = _existing_key(node, leaf)
    key = ".".join([*path, leaf])
    value = _parse_value(i.args["value"])
    had, old = leaf in node, node.get(leaf)
    if had and old == value and type(old) is type(value):
        raise ChangeRequestInvalid(f"{key} is already {json.dumps(value)}")
    if had:
        node[leaf] = value
    else:
        _insert_key(node, leaf, value)
    ws.write(CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    was = f" (was {json.dumps(old)})" if had else " (new setting)"
    return f"Set {key} to {json.dumps(value)} in {CONFIG_FILE}{was}."


# Where an addition goes decides whether two changes planned from one base merge: git's 3-way
# merge conflicts when both edit the same or adjacent lines. Appending always edits the last
# line (its comma) and puts every addition in the same place; sorted position spreads them and
# touches no existing line (except when the addition sorts last).


def _sorted_position(existing: list[str], name: str) -> int:
    """Where `name` goes among `existing`: before the first entry that sorts after it (the end
    when none does), so a sorted list stays sorted."""
    return next(
        (at for at, entry in enumerate(existing) if entry.casefold() > name.casefold()),
        len(existing),
    )


def _insert_key(node: dict[str, Any], key: str, value: Any) -> None:
    """Add a new key to a JSON object in sorted position (objects keep their key order)."""
    items = list(node.items())
    items.insert(_sorted_position([k for k, _ in items], key), (key, value))
    node.clear()
    node.update(items)


def _price(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else str(value or "")


def _add_page(ws: Workspace, i: Instruction) -> str:
    name = _slug(i.args["name"]).replace("_", "-")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name):
        raise ChangeRequestInvalid(f"{i.args['name']!r} is not a page name (letters, digits, -)")
    path = f"{PAGES_DIR}/{name}.md"
    if ws.exists(path):
        raise ChangeRequestInvalid(f"page {name} already exists")
    title = name.replace("-", " ").capitalize()
    body = f"# {title}\n\nThis page is new; its copy follows soon.\n"
    if i.args.get("listing"):
        catalog = _read_json(ws, PRODUCTS_FILE)
        if not isinstance(catalog, list) or not all(isinstance(p, dict) for p in catalog):
            raise ChangeRequestInvalid(f"{PRODUCTS_FILE} does not hold a list of products")
        rows = [
            f"| {p.get('sku', '')} | {p.get('name', '')} | {_price(p.get('price'))} "
            f"| {p.get('description', '')} |"
            for p in catalog
        ]
        body = "\n".join(
            [
                f"# {title}",
                "",
                "| SKU | Product | Price | About |",
                "| --- | --- | --- | --- |",
                *rows,
            ]
        )
        body += "\n"
    ws.write(path, body)
    summary = f"Add page {path}"
    if ws.exists(CONFIG_FILE):
        config = _read_json(ws, CONFIG_FILE)
        pages = config.get("pages") if isinstance(config, dict) else None
        if isinstance(pages, list):
            names = [p if isinstance(p, str) else "" for p in pages]
            pages.insert(_sorted_position(names, name), name)
            ws.write(CONFIG_FILE, json.dumps(config, indent=2) + "\n")
            summary += f" and list it in {CONFIG_FILE}"
    return summary + "."


def _add_migration(ws: Workspace, i: Instruction) -> str:
    name = _slug(i.args["name"])
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ChangeRequestInvalid(f"{i.args['name']!r} is not a migration name (a-z, 0-9, _)")
    existing = [p for p in ws.listing() if re.search(r"(^|/)migrations/\d{4}_[^/]+\.sql$", p)]
    folder = existing[0].rsplit("/", 1)[0] if existing else DEFAULT_MIGRATIONS_DIR
    if any(p.endswith(f"_{name}.sql") for p in existing):
        raise ChangeRequestInvalid(f"a migration named {name} already exists")
    number = max((int(p.rsplit("/", 1)[-1][:4]) for p in existing), default=0) + 1
    path = f"{folder}/{number:04d}_{name}.sql"
    if name.startswith("drop_"):
        sql = f"DROP TABLE IF EXISTS {name.removeprefix('drop_')};\n"
    else:
        table = name.removeprefix("create_")
        sql = (
            f"CREATE TABLE {table} (\n    id bigserial PRIMARY KEY,\n"
            "    created_at timestamptz NOT NULL DEFAULT now()\n);\n"
        )
    ws.write(path, f"-- {number:04d} {name.replace('_', ' ')}\n{sql}")
    return f"Add migration {path}."


def _find_tests(ws: Workspace, name: str) -> list[str]:
    slug = _slug(name)
    pattern = re.compile(
        rf"(^|/)(test_{slug}\.\w+|{slug}_test\.\w+|{slug}\.(test|spec)\.\w+)$", re.I
    )
    found = [p for p in ws.listing() if pattern.search(p)]
    if not found:
        tests = sorted(p for p in ws.listing() if TEST_PATH.search(p))
        raise ChangeRequestInvalid(
            f"no test named {name!r}; the tests are: {', '.join(tests) or 'none'}"
        )
    return found


def _remove_test(ws: Workspace, i: Instruction) -> str:
    paths = _find_tests(ws, i.args["name"])
    for path in paths:
        ws.write(path, None)
    return f"Delete {', '.join(paths)}."


SKIP_LINE = 'pytestmark = pytest.mark.skip(reason="skipped on request through changeflow")'


def _skip_test(ws: Workspace, i: Instruction) -> str:
    paths = _find_tests(ws, i.args["name"])
    for path in paths:
        if not path.endswith(".py"):
            raise ChangeRequestInvalid(f"only Python tests can be skipped, not {path}")
        text = ws.read(path)
        if SKIP_LINE in text:
            raise ChangeRequestInvalid(f"{path} is already skipped")
        header = "" if re.search(r"^import pytest$", text, re.M) else "import pytest\n"
        ws.write(path, f"{header}{SKIP_LINE}\n\n{text}")
    return f"Skip every test in {', '.join(paths)}."


def _record_note(ws: Workspace, i: Instruction) -> str:
    existing = (
        ws.read(CHANGE_NOTES_FILE)
        if ws.exists(CHANGE_NOTES_FILE)
        else "# Change requests\n\nRequests recorded for a person to carry out.\n"
    )
    title = i.text.splitlines()[0][:72]
    ws.write(CHANGE_NOTES_FILE, f"{existing}\n## {title}\n\n{i.text}\n")
    return f"Record the request in {CHANGE_NOTES_FILE} for a person to carry out."


_HANDLERS: dict[str, Callable[[Workspace, Instruction], str]] = {
    "set": _set_config,
    "page": _add_page,
    "migration": _add_migration,
    "remove_test": _remove_test,
    "skip_test": _skip_test,
    "note": _record_note,
}


def carry_out(ws: Workspace, instructions: list[Instruction]) -> list[str]:
    """Edit `ws` by each instruction in turn; one summary line per instruction."""
    return [_HANDLERS[i.kind](ws, i) for i in instructions]
