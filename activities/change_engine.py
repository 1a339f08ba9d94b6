"""Change engines turn a tenant's prompt into a change of the project's git repository.

`GitChangeEngine` is the built-in default: offline and deterministic. It understands a small
set of instructions, one per line (or separated by `;`):

- `set <key> to <value>`: edit config.json; `<key>` may be dotted (`checkout.payment_provider`),
  `<value>` is read as JSON when it parses (`true`, `5`, `"x"`) and as text otherwise.
- `add a page <name>`: create pages/<name>.md and list it in config.json's `pages`;
  `add a page <name> listing every product` also lists every product of products.json.
- `add a migration <name>`: the next numbered migrations/NNNN_<name>.sql (`drop_<table>` drops).
- `remove the <name> test` / `skip the <name> test`: delete or skip tests/test_<name>.py.
- anything else is recorded in docs/change-requests.md for a person to carry out.

It never touches a working tree: files are read from the base commit, the new tree is built in
a temporary index and written as objects, so concurrent plans of one repository cannot collide.
Commits get a fixed identity and the base commit's date, so the same prompt on the same base is
the same commit: applying twice is a no-op.

Risk comes from facts of the unified diff alone (`assess_risk`), tokens from text lengths:
  estimate = ENGINE_CONTEXT_TOKENS + tokens(prompt) + an output allowance per instruction kind
  used     = ENGINE_CONTEXT_TOKENS + tokens(prompt) + tokens(diff actually produced)
where tokens(text) = ceil(len(text) / 4), the usual rule of thumb for English and code.
"""

import asyncio
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from models.delivery import RiskLevel

MAX_PROMPT_CHARS = 4000
# What a model would read besides the prompt: instructions and a summary of the repository.
ENGINE_CONTEXT_TOKENS = 300
CHARS_PER_TOKEN = 4

CONFIG_FILE = "config.json"
PAGES_DIR = "pages"
PRODUCTS_FILE = "products.json"
CHANGE_NOTES_FILE = "docs/change-requests.md"
DEFAULT_MIGRATIONS_DIR = "migrations"

ENGINE_NAME = "changeflow"
ENGINE_EMAIL = "changeflow@localhost"


class ChangeProposal(BaseModel):
    diff: str  # unified diff against base_commit
    diff_summary: str  # human readable, a few lines
    files_changed: list[str]
    risk_level: RiskLevel
    risk_reasons: list[str]
    token_estimate: int  # from the prompt text
    base_commit: str
    # The commit already made of this diff on base_commit (a rebased plan): applied as it is.
    commit_sha: str | None = None


class AppliedChange(BaseModel):
    commit_sha: str  # commit on `branch` implementing the proposal
    tokens_used: int  # what the work actually cost
    # The commit's parent and its diff against it: the proposal's own unless it was rebased.
    base_commit: str = ""
    diff: str = ""


class ChangeEngine(Protocol):
    async def plan(self, *, repo: Path, base_branch: str, prompt: str) -> ChangeProposal: ...

    async def apply(
        self,
        *,
        repo: Path,
        proposal: ChangeProposal,
        prompt: str,
        branch: str,
        onto: str | None = None,
    ) -> AppliedChange: ...


class ChangeEngineError(Exception):
    """Base of the engine's errors; none of them gets better by retrying."""


class ChangeRequestInvalid(ChangeEngineError):
    """The prompt cannot be acted on (empty, too long, names something absent, changes nothing)."""


class RepositoryError(ChangeEngineError):
    """The repository is missing or unusable, or a branch holds something unexpected."""


class RebaseConflict(ChangeEngineError):
    """The approved change does not apply cleanly to the branch it must be committed on."""


# --- git -----------------------------------------------------------------------------------


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # No prompts, no system config, stable messages: output is parsed and compared.
    return {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
        **(extra or {}),
    }


class GitCommandFailed(RepositoryError):
    def __init__(self, args: tuple[str, ...], returncode: int, stderr: str) -> None:
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode


async def run_git(
    repo: Path,
    *args: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> tuple[int, bytes]:
    """Run `git -C repo args...`; returns (exit code, stdout). Killed if the caller is cancelled."""
    process = await asyncio.create_subprocess_exec(
        "git",
        "-C",
        str(repo),
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=git_env(env),
    )
    try:
        out, err = await process.communicate(stdin)
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    code = process.returncode or 0
    if check and code != 0:
        raise GitCommandFailed(args, code, err.decode(errors="replace"))
    return code, out


async def git_text(repo: Path, *args: str, **kwargs: Any) -> str:
    return (await run_git(repo, *args, **kwargs))[1].decode().strip()


async def resolve_commit(repo: Path, revision: str) -> str | None:
    code, out = await run_git(
        repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}",
        check=False,
    )  # fmt: skip
    return out.decode().strip() if code == 0 else None


async def ensure_repository(repo: Path) -> None:
    if not Path(repo).is_dir():  # noqa: ASYNC240 (one stat: cheaper than a hop to a thread)
        raise RepositoryError(f"repository {repo} does not exist")
    code, _ = await run_git(repo, "rev-parse", "--git-dir", check=False)
    if code != 0:
        raise RepositoryError(f"{repo} is not a git repository")


async def valid_branch_name(repo: Path, branch: str) -> bool:
    code, _ = await run_git(repo, "check-ref-format", "--branch", branch, check=False)
    return code == 0 and not branch.startswith("-")


ZERO_SHA = "0" * 40


async def move_ref(repo: Path, ref: str, new: str, old: str | None) -> bool:
    """Compare-and-swap `ref` from `old` (None: must not exist) to `new`; False if it moved."""
    code, _ = await run_git(repo, "update-ref", ref, new, old or ZERO_SHA, check=False)
    return code == 0


async def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    """Whether `descendant` holds `ancestor` (a commit is its own ancestor)."""
    code, _ = await run_git(repo, "merge-base", "--is-ancestor", ancestor, descendant, check=False)
    return code == 0


async def tree_of(repo: Path, commit: str) -> str:
    return await git_text(repo, "rev-parse", "--verify", "--end-of-options", f"{commit}^{{tree}}")


def engine_identity(date: str) -> dict[str, str]:
    """The engine's fixed identity at `date` (unix seconds): the same change is the same commit."""
    return {
        "GIT_AUTHOR_NAME": ENGINE_NAME,
        "GIT_AUTHOR_EMAIL": ENGINE_EMAIL,
        "GIT_AUTHOR_DATE": f"{date} +0000",
        "GIT_COMMITTER_NAME": ENGINE_NAME,
        "GIT_COMMITTER_EMAIL": ENGINE_EMAIL,
        "GIT_COMMITTER_DATE": f"{date} +0000",
    }


async def commit_date(repo: Path, commit: str) -> str:
    return await git_text(repo, "log", "-1", "--no-walk", "--format=%ct", commit, "--")


async def commit_tree(repo: Path, tree: str, parent: str, message: str) -> str:
    """A commit of `tree` on `parent` by the engine, dated like its parent (deterministic)."""
    return await git_text(
        repo,
        "commit-tree",
        "--no-gpg-sign",
        tree,
        "-p",
        parent,
        stdin=message.encode(),
        env=engine_identity(await commit_date(repo, parent)),
    )


CAS_ATTEMPTS = 5


async def fast_forward(repo: Path, branch: str, commit: str) -> bool:
    """Advance `branch` to `commit` by compare-and-swap when the commit descends from it.

    True once the branch holds the commit (already, or now); False when the branch has moved
    to something the commit does not descend from, and was left alone.
    """
    ref = f"refs/heads/{branch}"
    for _ in range(CAS_ATTEMPTS):
        current = await resolve_commit(repo, ref)
        if current is not None and await is_ancestor(repo, commit, current):
            return True
        if current is not None and not await is_ancestor(repo, current, commit):
            return False
        if await move_ref(repo, ref, commit, current):
            return True
    raise RepositoryError(f"branch {branch} kept moving while it was advanced")


async def restore_tree(repo: Path, branch: str, commit: str, message: str) -> str:
    """Make `branch` hold `commit`'s tree by a new commit on top of it (a revert that keeps the
    history), by compare-and-swap; nothing when it holds that tree already. Returns the head."""
    ref = f"refs/heads/{branch}"
    tree = await tree_of(repo, commit)
    for _ in range(CAS_ATTEMPTS):
        current = await resolve_commit(repo, ref)
        if current is None:
            raise RepositoryError(f"{repo} has no branch {branch}")
        if await tree_of(repo, current) == tree:
            return current
        revert = await commit_tree(repo, tree, current, message)
        if await move_ref(repo, ref, revert, current):
            return revert
    raise RepositoryError(f"branch {branch} kept moving while it was restored")


# --- risk ----------------------------------------------------------------------------------


@dataclass
class FileDiff:
    path: str
    status: str = "modified"  # added | deleted | modified | renamed
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def changed_lines(diff: str) -> list[tuple[str, str, list[str], list[str]]]:
    """What a diff changes, per file: path, status, the removed and the added lines in order.

    Context lines and hunk positions are left out: a change that only moved because the lines
    around it changed is the same change (a clean rebase), one whose own lines differ is not.
    """
    return [(f.path, f.status, f.removed, f.added) for f in parse_unified_diff(diff)]


def same_changed_lines(approved: str, rebased: str) -> bool:
    """Whether a rebased diff changes exactly what the approved diff changed."""
    return changed_lines(approved) == changed_lines(rebased)


def parse_unified_diff(diff: str) -> list[FileDiff]:
    files: list[FileDiff] = []
    current: FileDiff | None = None
    in_hunk = False
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            _, _, rest = line.partition(" b/")
            current = FileDiff(path=rest or line.split()[-1])
            files.append(current)
            in_hunk = False
        elif current is None:
            continue
        elif line.startswith("@@"):
            in_hunk = True
        elif not in_hunk:
            if line.startswith("new file mode"):
                current.status = "added"
            elif line.startswith("deleted file mode"):
                current.status = "deleted"
            elif line.startswith("rename to "):
                current.status, current.path = "renamed", line.removeprefix("rename to ")
        elif line.startswith("+"):
            current.added.append(line[1:])
        elif line.startswith("-"):
            current.removed.append(line[1:])
    return files


SENSITIVE_PATH = re.compile(r"checkout|payment|billing|stripe|paypal|adyen|invoice", re.I)
SENSITIVE_CONFIG_KEY = re.compile(
    r"checkout|payment|price|currency|tax|secret|password|api_?key|token", re.I
)
CONFIG_PATH = re.compile(r"(^|/)((config|settings)[^/]*\.(json|ya?ml|toml|ini)|\.env[^/]*)$", re.I)
CONFIG_KEY = re.compile(r'^\s*"([^"]+)"\s*:|^\s*([A-Za-z_][\w.-]*)\s*[:=]')
MIGRATION_PATH = re.compile(r"(^|/)(migrations?|migrate|alembic/versions)/|\.sql$", re.I)
DESTRUCTIVE_SQL = re.compile(
    r"\b(DROP\s+(TABLE|COLUMN|SCHEMA|DATABASE|INDEX)|TRUNCATE|DELETE\s+FROM|ALTER\s+TABLE\s+\S+\s+DROP)\b",
    re.I,
)
TEST_PATH = re.compile(
    r"(^|/)(tests?|__tests__|spec)/|(^|/)test_[^/]+$|_test\.\w+$|\.(test|spec)\.\w+$", re.I
)
SKIP_MARKER = re.compile(
    r"pytest\.mark\.(skip|xfail)|unittest\.skip|\.skip\(|\bxit\(|\bxdescribe\(|@Disabled|t\.Skip\("
)
TEST_CASE = re.compile(r"\bdef test_|\b(it|test|describe)\(\s*['\"]|@Test\b")

LARGE_DIFF_LINES = 400
HUGE_DIFF_LINES = 1000
MANY_FILES = 20


def assess_risk(diff: str) -> tuple[RiskLevel, list[str]]:
    """The risk of a unified diff and the reasons for it, from the diff's facts alone.

    HIGH: checkout/payment paths or config keys, a new migration, a deleted test file, a diff of
    more than HUGE_DIFF_LINES lines. CRITICAL: rewriting an existing migration, destructive
    SQL, or two HIGH findings at once. MEDIUM: skipped or removed test cases, a deleted file,
    more than LARGE_DIFF_LINES lines or MANY_FILES files. Otherwise LOW.
    """
    findings: list[tuple[RiskLevel, str]] = []
    files = parse_unified_diff(diff)
    for f in files:
        if SENSITIVE_PATH.search(f.path):
            findings.append((RiskLevel.HIGH, f"touches checkout/payment code: {f.path}"))
        if CONFIG_PATH.search(f.path):
            keys = sorted(
                {
                    match.group(1) or match.group(2)
                    for line in f.added + f.removed
                    if (match := CONFIG_KEY.match(line))
                }
            )
            for key in keys:
                if SENSITIVE_CONFIG_KEY.search(key):
                    findings.append((RiskLevel.HIGH, f"changes payment-sensitive setting {key}"))
        if MIGRATION_PATH.search(f.path):
            if f.status == "added":
                findings.append((RiskLevel.HIGH, f"adds database migration {f.path}"))
            else:
                findings.append((RiskLevel.CRITICAL, f"rewrites existing migration {f.path}"))
            if any(DESTRUCTIVE_SQL.search(line) for line in f.added):
                findings.append((RiskLevel.CRITICAL, f"destructive SQL in {f.path}"))
        if TEST_PATH.search(f.path):
            if f.status == "deleted":
                findings.append((RiskLevel.HIGH, f"deletes test file {f.path}"))
            else:
                if any(SKIP_MARKER.search(line) for line in f.added):
                    findings.append((RiskLevel.MEDIUM, f"skips tests in {f.path}"))
                removed_cases = sum(1 for line in f.removed if TEST_CASE.search(line))
                added_cases = sum(1 for line in f.added if TEST_CASE.search(line))
                if removed_cases > added_cases:
                    findings.append((RiskLevel.MEDIUM, f"removes test cases from {f.path}"))
        elif f.status == "deleted":
            findings.append((RiskLevel.MEDIUM, f"deletes {f.path}"))
    changed_lines = sum(len(f.added) + len(f.removed) for f in files)
    if changed_lines > HUGE_DIFF_LINES:
        findings.append((RiskLevel.HIGH, f"very large diff: {changed_lines} changed lines"))
    elif changed_lines > LARGE_DIFF_LINES:
        findings.append((RiskLevel.MEDIUM, f"large diff: {changed_lines} changed lines"))
    if len(files) > MANY_FILES:
        findings.append((RiskLevel.MEDIUM, f"touches {len(files)} files"))
    highs = [reason for level, reason in findings if level == RiskLevel.HIGH]
    if len(highs) >= 2:
        findings.append((RiskLevel.CRITICAL, f"{len(highs)} high-risk changes at once"))
    if not findings:
        return RiskLevel.LOW, [
            f"small change: {len(files)} file(s), {changed_lines} changed lines; no sensitive "
            "paths, migrations or test changes"
        ]
    level = max((level for level, _ in findings), key=lambda level: level.rank)
    return level, [reason for _, reason in findings]


# --- tokens --------------------------------------------------------------------------------


def tokens_of(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


# Expected diff tokens per instruction kind, calibrated on typical repositories' diffs.
OUTPUT_ALLOWANCE = {
    "set": 95,
    "page": 135,
    "migration": 110,
    "remove_test": 100,
    "skip_test": 90,
    "note": 90,  # plus the note's own text
}


def token_estimate(instructions: list["Instruction"], prompt: str) -> int:
    allowance = sum(
        OUTPUT_ALLOWANCE[i.kind] + (tokens_of(i.text) if i.kind == "note" else 0)
        for i in instructions
    )
    return ENGINE_CONTEXT_TOKENS + tokens_of(prompt) + allowance


def tokens_used(prompt: str, diff: str) -> int:
    return ENGINE_CONTEXT_TOKENS + tokens_of(prompt) + tokens_of(diff)


# --- instructions --------------------------------------------------------------------------


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


class Workspace:
    """The base commit's files plus pending edits (None deletes a file)."""

    def __init__(self, repo: Path, commit: str, modes: dict[str, str]) -> None:
        self.repo, self.commit, self.modes = repo, commit, modes
        self.paths = set(modes)
        self.edits: dict[str, str | None] = {}

    @classmethod
    async def open(cls, repo: Path, commit: str) -> "Workspace":
        _, out = await run_git(repo, "ls-tree", "-r", "-z", commit)
        modes = {}
        for entry in out.decode().split("\0"):
            if entry:
                info, path = entry.split("\t", 1)
                modes[path] = info.split(" ", 1)[0]
        return cls(repo, commit, modes)

    def mode(self, path: str) -> str:
        """The file mode to write: an edited file keeps its own (executable stays executable)."""
        return self.modes.get(path, "100644")

    def exists(self, path: str) -> bool:
        if path in self.edits:
            return self.edits[path] is not None
        return path in self.paths

    def listing(self) -> list[str]:
        return sorted(p for p in self.paths | set(self.edits) if self.exists(p))

    async def read(self, path: str) -> str:
        if path in self.edits:
            text = self.edits[path]
            if text is None:
                raise ChangeRequestInvalid(f"{path} was deleted by an earlier instruction")
            return text
        if path not in self.paths:
            raise ChangeRequestInvalid(f"the repository has no {path}")
        if self.modes[path] not in ("100644", "100755"):
            raise ChangeRequestInvalid(f"{path} is not a regular file")
        _, out = await run_git(self.repo, "cat-file", "blob", f"{self.commit}:{path}")
        try:
            return out.decode()
        except UnicodeDecodeError:
            raise ChangeRequestInvalid(f"{path} is not a text file") from None

    def write(self, path: str, text: str | None) -> None:
        self.edits[path] = text


def _slug(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.strip("'\"")


async def _read_json(ws: Workspace, path: str) -> Any:
    try:
        return json.loads(await ws.read(path))
    except ValueError:
        raise ChangeRequestInvalid(f"{path} is not valid JSON") from None


def _existing_key(node: dict[str, Any], key: str) -> str:
    """`key` as the file spells it when only its case differs ("Theme" finds "theme")."""
    if key in node:
        return key
    return next((k for k in node if k.lower() == key.lower()), key)


async def _set_config(ws: Workspace, i: Instruction) -> str:
    config = await _read_json(ws, CONFIG_FILE)
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
    node[leaf] = value
    ws.write(CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    was = f" (was {json.dumps(old)})" if had else " (new setting)"
    return f"Set {key} to {json.dumps(value)} in {CONFIG_FILE}{was}."


def _price(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else str(value or "")


async def _add_page(ws: Workspace, i: Instruction) -> str:
    name = _slug(i.args["name"]).replace("_", "-")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name):
        raise ChangeRequestInvalid(f"{i.args['name']!r} is not a page name (letters, digits, -)")
    path = f"{PAGES_DIR}/{name}.md"
    if ws.exists(path):
        raise ChangeRequestInvalid(f"page {name} already exists")
    title = name.replace("-", " ").capitalize()
    body = f"# {title}\n\nThis page is new; its copy follows soon.\n"
    if i.args.get("listing"):
        catalog = await _read_json(ws, PRODUCTS_FILE)
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
        config = await _read_json(ws, CONFIG_FILE)
        if isinstance(config, dict) and isinstance(config.get("pages"), list):
            config["pages"].append(name)
            ws.write(CONFIG_FILE, json.dumps(config, indent=2) + "\n")
            summary += f" and list it in {CONFIG_FILE}"
    return summary + "."


async def _add_migration(ws: Workspace, i: Instruction) -> str:
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


async def _remove_test(ws: Workspace, i: Instruction) -> str:
    paths = _find_tests(ws, i.args["name"])
    for path in paths:
        ws.write(path, None)
    return f"Delete {', '.join(paths)}."


SKIP_LINE = 'pytestmark = pytest.mark.skip(reason="skipped on request through changeflow")'


async def _skip_test(ws: Workspace, i: Instruction) -> str:
    paths = _find_tests(ws, i.args["name"])
    for path in paths:
        if not path.endswith(".py"):
            raise ChangeRequestInvalid(f"only Python tests can be skipped, not {path}")
        text = await ws.read(path)
        if SKIP_LINE in text:
            raise ChangeRequestInvalid(f"{path} is already skipped")
        header = "" if re.search(r"^import pytest$", text, re.M) else "import pytest\n"
        ws.write(path, f"{header}{SKIP_LINE}\n\n{text}")
    return f"Skip every test in {', '.join(paths)}."


async def _record_note(ws: Workspace, i: Instruction) -> str:
    existing = (
        await ws.read(CHANGE_NOTES_FILE)
        if ws.exists(CHANGE_NOTES_FILE)
        else "# Change requests\n\nRequests recorded for a person to carry out.\n"
    )
    title = i.text.splitlines()[0][:72]
    ws.write(CHANGE_NOTES_FILE, f"{existing}\n## {title}\n\n{i.text}\n")
    return f"Record the request in {CHANGE_NOTES_FILE} for a person to carry out."


_HANDLERS: dict[str, Callable[[Workspace, Instruction], Any]] = {
    "set": _set_config,
    "page": _add_page,
    "migration": _add_migration,
    "remove_test": _remove_test,
    "skip_test": _skip_test,
    "note": _record_note,
}


# --- the engine ----------------------------------------------------------------------------


@dataclass
class BuiltChange:
    tree: str
    diff: str
    summary: list[str]
    files_changed: list[str]
    instructions: list[Instruction]


DIFF_OPTIONS = (
    "-c",
    "core.quotepath=off",
    "diff",
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--no-renames",
    "--full-index",
    "--src-prefix=a/",
    "--dst-prefix=b/",
)


class GitChangeEngine:
    """The built-in engine: deterministic edits of the repository for a documented prompt set."""

    async def plan(self, *, repo: Path, base_branch: str, prompt: str) -> ChangeProposal:
        instructions = parse_prompt(prompt)
        base_commit = await resolve_commit(repo, base_branch)
        if base_commit is None:
            await ensure_repository(repo)  # only a failure pays for finding out why
            raise RepositoryError(f"{repo} has no branch or commit {base_branch!r}")
        built = await self._build(repo, base_commit, instructions)
        risk_level, risk_reasons = assess_risk(built.diff)
        return ChangeProposal(
            diff=built.diff,
            diff_summary="\n".join(built.summary),
            files_changed=built.files_changed,
            risk_level=risk_level,
            risk_reasons=risk_reasons,
            token_estimate=token_estimate(instructions, prompt),
            base_commit=base_commit,
        )

    async def apply(
        self,
        *,
        repo: Path,
        proposal: ChangeProposal,
        prompt: str,
        branch: str,
        onto: str | None = None,
    ) -> AppliedChange:
        """Commit the proposal on `branch`. With `onto` (the default branch) and that branch
        moved past the proposal's base, the change is rebased onto its head (3-way, no work
        tree); the result carries the diff actually committed, to compare with the approved."""
        instructions = parse_prompt(prompt)
        if not await valid_branch_name(repo, branch):
            raise ChangeRequestInvalid(f"{branch!r} is not a valid branch name")
        approved = await self._approved_commit(repo, proposal, prompt, instructions)
        tokens = tokens_used(prompt, proposal.diff)
        head = await resolve_commit(repo, f"refs/heads/{onto}") if onto else None
        if onto and head is None:
            raise RepositoryError(f"{repo} has no branch {onto!r}")
        if head is None or head == proposal.base_commit:
            await self._advance_branch(repo, branch, approved, proposal.base_commit)
            return AppliedChange(
                commit_sha=approved,
                tokens_used=tokens,
                base_commit=proposal.base_commit,
                diff=proposal.diff,
            )
        commit, diff = await self._rebase(repo, approved, head, onto or "")
        await self._point_branch(repo, branch, commit)
        return AppliedChange(commit_sha=commit, tokens_used=tokens, base_commit=head, diff=diff)

    async def _approved_commit(
        self, repo: Path, proposal: ChangeProposal, prompt: str, instructions: list[Instruction]
    ) -> str:
        """The commit of the approved diff on its base: the plan's own when it is that (a
        rebased plan's), otherwise built again from the prompt, which must give the same diff."""
        base_date = await self._commit_date(repo, proposal.base_commit)
        if proposal.commit_sha and await resolve_commit(repo, proposal.commit_sha):
            parents = await git_text(
                repo, "rev-list", "--parents", "-n", "1", proposal.commit_sha, "--"
            )
            on_base = parents.split()[1:] == [proposal.base_commit]
            if on_base and await self._diff(repo, proposal.base_commit, proposal.commit_sha) == (
                proposal.diff
            ):
                return proposal.commit_sha
        built = await self._build(repo, proposal.base_commit, instructions)
        if built.diff != proposal.diff:
            raise ChangeRequestInvalid(
                "the prompt no longer produces the proposed diff on its base commit; plan again"
            )
        return await self._commit(repo, proposal.base_commit, base_date, built, prompt)

    async def _rebase(self, repo: Path, approved: str, head: str, onto: str) -> tuple[str, str]:
        """`approved` replayed on `head`: a 3-way merge in git's object store (merge-tree
        writes no index and no work tree), committed like the approved one on the new parent."""
        code, out = await run_git(
            repo, "merge-tree", "--write-tree", "--no-messages", "--name-only", head, approved,
            check=False,
        )  # fmt: skip
        if code == 1:
            conflicted = sorted(set(out.decode().splitlines()[1:]) - {""})
            raise RebaseConflict(
                f"the approved change conflicts with {onto} at {head[:12]} "
                f"in {', '.join(conflicted) or 'the repository'}"
            )
        if code != 0:
            raise GitCommandFailed(("merge-tree",), code, out.decode(errors="replace"))
        tree = out.decode().splitlines()[0].strip()
        if tree == await tree_of(repo, head):
            raise ChangeRequestInvalid(f"{onto} at {head[:12]} already holds this change")
        message = (await run_git(repo, "log", "-1", "--format=%B", approved, "--"))[1].decode()
        commit = await commit_tree(repo, tree, head, message)
        return commit, await self._diff(repo, head, commit)

    async def _diff(self, repo: Path, old: str, new: str) -> str:
        return (await run_git(repo, *DIFF_OPTIONS, "--patch", old, new))[1].decode()

    async def _point_branch(self, repo: Path, branch: str, commit: str) -> None:
        """The request's own branch follows its rebased change; only this request writes it."""
        ref = f"refs/heads/{branch}"
        for _ in range(CAS_ATTEMPTS):
            current = await resolve_commit(repo, ref)
            if current == commit or await move_ref(repo, ref, commit, current):
                return
        raise RepositoryError(f"branch {branch} kept moving while the change was committed")

    async def _build(
        self, repo: Path, base_commit: str, instructions: list[Instruction]
    ) -> BuiltChange:
        ws = await Workspace.open(repo, base_commit)
        summary = [await _HANDLERS[i.kind](ws, i) for i in instructions]
        with tempfile.TemporaryDirectory(prefix="changeflow-index-") as scratch:
            index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            await run_git(repo, "read-tree", base_commit, env=index)
            entries = []
            for path, text in sorted(ws.edits.items()):
                if text is None:  # mode 0 removes the path
                    entries.append(f"0 {ZERO_SHA}\t{path}\0")
                    continue
                blob = await git_text(
                    repo, "hash-object", "-w", "--no-filters", "--stdin", stdin=text.encode()
                )
                entries.append(f"{ws.mode(path)} {blob}\t{path}\0")
            await run_git(
                repo,
                "update-index",
                "-z",
                "--index-info",
                stdin="".join(entries).encode(),
                env=index,
            )
            tree = await git_text(repo, "write-tree", env=index)
        # Line counts and the patch in one call: numstat lines, a blank line, the patch.
        _, out = await run_git(repo, *DIFF_OPTIONS, "--numstat", "--patch", base_commit, tree)
        numstat, _, diff = out.decode().partition("\n\n")
        if not diff:
            raise ChangeRequestInvalid("the prompt changes nothing in the repository")
        files: list[str] = []
        added = removed = 0
        for row in numstat.splitlines():
            plus, minus, path = row.split("\t", 2)
            files.append(path)
            added += int(plus) if plus.isdigit() else 0
            removed += int(minus) if minus.isdigit() else 0
        summary.append(f"{len(files)} file(s) changed, +{added} -{removed} lines.")
        return BuiltChange(tree, diff, summary, files, instructions)

    async def _commit_date(self, repo: Path, base_commit: str) -> str:
        """The base commit's date, after checking the base is that commit (one git call)."""
        code, out = await run_git(
            repo, "log", "-1", "--no-walk", "--format=%H %ct", "--end-of-options",
            f"{base_commit}^{{commit}}", "--", check=False,
        )  # fmt: skip
        sha, _, date = out.decode().strip().partition(" ")
        if code != 0 or sha != base_commit:
            await ensure_repository(repo)  # only a failure pays for finding out why
            raise RepositoryError(f"{repo} has no commit {base_commit}")
        return date

    async def _commit(
        self, repo: Path, base_commit: str, date: str, built: BuiltChange, prompt: str
    ) -> str:
        # Fixed identity and the base's date: the same change is the same commit, every time.
        identity = engine_identity(date)
        title = built.summary[0][:72]
        body = "\n".join(built.summary)
        message = f"{title}\n\n{body}\n\nRequested:\n{prompt.strip()}\n"
        return await git_text(
            repo,
            "commit-tree",
            "--no-gpg-sign",
            built.tree,
            "-p",
            base_commit,
            stdin=message.encode(),
            env=identity,
        )

    async def _advance_branch(self, repo: Path, branch: str, commit: str, base: str) -> None:
        ref = f"refs/heads/{branch}"
        for _ in range(CAS_ATTEMPTS):
            current = await resolve_commit(repo, ref)
            if current == commit:
                return
            if current is not None:
                if await is_ancestor(repo, commit, current):
                    return  # the branch already holds the change (and moved on since)
                if current != base:
                    raise RepositoryError(
                        f"branch {branch} is at {current[:12]}, which neither holds the change "
                        f"nor is its base {base[:12]}"
                    )
            if await move_ref(repo, ref, commit, current):
                return
        raise RepositoryError(f"branch {branch} kept moving while the change was committed")
