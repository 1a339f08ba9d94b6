"""The edit format the model engine accepts: SEARCH/REPLACE blocks, read as tolerantly as
Aider's `editblock` coder reads them (aider/coders/editblock_coder.py), and an explicit delete.

    path/inside/the/repository.txt
    <<<<<<< SEARCH
    lines copied from the file
    =======
    the lines that replace them
    >>>>>>> REPLACE

    DELETE path/of/a/file/to/remove

What models actually write around that is accepted as Aider accepts it:
- the path is found up to three lines above `<<<<<<< SEARCH`, passing over fence lines (a
  fence's language tag is never a path; a fence holding a path, ```` ```pages/a.md ````, is);
  backticks, `*`, `#` and a trailing `:` around it are stripped and a leading `./` dropped; a
  block with no path line edits the file of the block before it;
- markers of 5 to 9 characters, trailing spaces after them, a block closed by a second divider;
- SEARCH text wrapped in a fence of its own is unwrapped.
A SEARCH must match exactly once: exactly first, then ignoring trailing whitespace on each line,
then with its lines' leading whitespace shifted uniformly (the replacement is shifted the same
way); a spurious blank first line is dropped. Never a fuzzy match: an edit that does not match
once goes back to the model. An empty SEARCH creates a file that does not exist yet.

A block that does not apply is an `EditFailed`: its `reason` goes back to the model and its
`summary` (one short sentence) is what a person reads if no later answer applies. A path the
engine never writes (outside the repository, into `.git`, a binary, non-regular or oversized
file) is a `ChangeRequestInvalid` that ends the plan: the model only proposes file edits.
"""

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import pygit2

from activities.change_engine import ChangeRequestInvalid
from activities.git_store import Workspace, check_tree_path

SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"
DELETE = "DELETE"

FORMAT_RULES = f"""Answer with edits only, as SEARCH/REPLACE blocks:

path/of/the/file
{SEARCH}
lines copied exactly from the file
{DIVIDER}
the lines that replace them
{REPLACE}

The SEARCH part must match the file exactly once. An empty SEARCH part creates a new file.
To remove a file, write one line: {DELETE} path/of/the/file
Use paths of the listing only (or new paths inside the repository). Edit text files only."""

_HEAD = re.compile(r"^<{5,9} SEARCH>?\s*$")
_DIVIDER = re.compile(r"^={5,9}\s*$")
_UPDATED = re.compile(r"^>{5,9} REPLACE\s*$")
_DELETE = re.compile(rf"^\s*{DELETE}(?: FILE)?:?\s+(?P<path>\S+)\s*$")
_FENCE = "```"
# Lines above SEARCH looked at for its path (Aider looks back three).
PATH_LOOKBACK = 3
# What a person reads of the model's own words, at most.
QUOTE_CHARS = 160


class EditFailed(Exception):
    """An answer whose edits do not apply. `reason` goes back to the model; `summary` is the
    short sentence a person reads when no later answer applied."""

    def __init__(self, reason: str, summary: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.summary = summary or reason


@dataclass(frozen=True)
class Edit:
    path: str
    search: str
    replace: str
    delete: bool = False


def parse_edits(answer: str, known_paths: list[str] | None = None) -> list[Edit]:
    """The answer's edits in order; `known_paths` (the listing) picks among candidate paths."""
    known = known_paths or []
    lines = answer.splitlines(keepends=True)
    edits: list[Edit] = []
    current: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        deleted = _DELETE.match(line)
        if deleted:
            edits.append(Edit(_clean_path(deleted["path"]) or deleted["path"], "", "", True))
            i += 1
            continue
        if not _HEAD.match(line.strip()):
            i += 1
            continue
        path = _find_path(lines[max(0, i - PATH_LOOKBACK) : i], known) or current
        if path is None:
            raise EditFailed(
                f"block {len(edits) + 1} has no path: put the file's path alone on the line "
                f"before {SEARCH}",
                "the model's answer named no file to edit",
            )
        current = path
        search, i = _until(lines, i + 1, (_DIVIDER,))
        if i >= len(lines):
            raise _unclosed(len(edits) + 1, DIVIDER)
        replace, i = _until(lines, i + 1, (_UPDATED, _DIVIDER))
        if i >= len(lines):
            raise _unclosed(len(edits) + 1, REPLACE)
        edits.append(Edit(path, _unwrap(search), _unwrap(replace)))
        i += 1
    if not edits:
        raise EditFailed(
            "the answer holds no SEARCH/REPLACE block; every edit must be a block.\n"
            + FORMAT_RULES,
            _declined(answer),
        )
    return edits


def _until(lines: list[str], i: int, ends: tuple[re.Pattern[str], ...]) -> tuple[str, int]:
    taken: list[str] = []
    while i < len(lines) and not any(end.match(lines[i].strip()) for end in ends):
        taken.append(lines[i])
        i += 1
    return "".join(taken), i


def _unclosed(number: int, marker: str) -> EditFailed:
    return EditFailed(
        f"block {number} is not closed: expected a line {marker}",
        "the model's answer was not in the edit format (a block was never closed)",
    )


def _find_path(above: list[str], known: list[str]) -> str | None:
    """The path line above SEARCH, as Aider's find_filename: look back while lines are fences."""
    found: list[str] = []
    for line in reversed(above):
        candidate = _clean_path(line)
        if candidate:
            found.append(candidate)
        if not line.startswith(_FENCE):
            break
    for candidate in found:
        if candidate in known:
            return candidate
    for candidate in found:  # a bare file name that names one listed file
        same_name = [p for p in known if PurePosixPath(p).name == candidate]
        if len(same_name) == 1:
            return same_name[0]
    for candidate in found:
        if "." in candidate:
            return candidate
    return found[0] if found else None


def _clean_path(line: str) -> str | None:
    """A path as models write it, or None for a line that holds none (a bare fence)."""
    text = line.strip()
    if not text or text == "...":
        return None
    if text.startswith(_FENCE):
        # ```python is a fence; ```pages/a.md a fence that names its file.
        text = text.lstrip("`")
        if "." not in text and "/" not in text:
            return None
    text = text.rstrip(":").lstrip("#").strip().strip("`").strip("*").strip("`").strip()
    while text.startswith("./"):
        text = text[2:]
    return text or None


def _unwrap(text: str) -> str:
    """Text wrapped in a fence of its own loses the fence (Aider's strip_quoted_wrapping)."""
    lines = text.splitlines(keepends=True)
    if len(lines) >= 2 and lines[0].startswith(_FENCE) and lines[-1].strip() == _FENCE:
        return "".join(lines[1:-1])
    return text


def _declined(answer: str) -> str:
    """What a person reads of an answer with no edit: the model's first words, whole."""
    words = " ".join(answer.split())
    if not words:
        return "the model answered with nothing"
    if len(words) > QUOTE_CHARS:
        cut = words[:QUOTE_CHARS]
        end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
        words = cut[: end + 1] if end > 0 else cut[: cut.rfind(" ")] + " …"
    return f"the model made no edit; it answered: “{words}”"


def apply_edits(ws: Workspace, edits: list[Edit], *, max_file_bytes: int) -> list[str]:
    """Apply `edits` to `ws`; one summary line per edited file."""
    touched: dict[str, str] = {}
    for number, edit in enumerate(edits, start=1):
        check_tree_path(edit.path)
        if edit.delete:
            if not ws.exists(edit.path):
                raise EditFailed(
                    f"block {number}: {edit.path} does not exist, so it cannot be deleted",
                    f"the model asked to delete {edit.path}, which does not exist",
                )
            _editable(ws, edit.path, max_file_bytes)  # never a binary or oversized file
            ws.write(edit.path, None)
            touched[edit.path] = "deleted"
            continue
        if "\0" in edit.replace:
            raise ChangeRequestInvalid(f"{edit.path}: binary content is refused")
        if not ws.exists(edit.path):
            if edit.search.strip():
                raise EditFailed(
                    f"block {number}: {edit.path} does not exist; to create it, leave SEARCH empty",
                    f"the model edited {edit.path}, which does not exist",
                )
            text, verb = edit.replace, "created"
        else:
            current = _editable(ws, edit.path, max_file_bytes)
            if not edit.search.strip():
                raise EditFailed(
                    f"block {number}: {edit.path} exists; SEARCH must quote the lines to replace",
                    f"the model tried to create {edit.path}, which exists",
                )
            text = _replaced(current, edit.search, edit.replace, number, edit.path)
            verb = "edited"
        if len(text.encode()) > max_file_bytes:
            raise ChangeRequestInvalid(f"{edit.path} would exceed {max_file_bytes} bytes")
        ws.write(edit.path, text)
        touched.setdefault(edit.path, verb)
    return [f"{verb.capitalize()} {path}." for path, verb in touched.items()]


def _replaced(whole: str, search: str, replace: str, number: int, path: str) -> str:
    """`whole` with the one match of `search` replaced: exact, then ignoring trailing
    whitespace, then with leading whitespace shifted uniformly; a blank first line dropped."""
    found = whole.count(search)
    if found == 1:
        return whole.replace(search, replace, 1)
    if found > 1:
        raise _no_match(number, path, f"occurs {found} times")
    part, new = _lines(search), _lines(replace)
    attempts = [part]
    if len(part) > 2 and not part[0].strip():
        attempts.append(part[1:])
    have = _lines(whole)
    for lines in attempts:
        for matcher in (_match_trailing, _match_indented):
            done = matcher(have, lines, new)
            if done == "ambiguous":
                raise _no_match(number, path, "occurs more than once")
            if done is not None:
                return done
    raise _no_match(number, path, "does not occur")


def _no_match(number: int, path: str, how: str) -> EditFailed:
    return EditFailed(
        f"block {number}: the SEARCH text {how} in {path}; copy the lines exactly, with enough "
        "context to match once",
        f"the model's edit of {path} did not match the file ({how})",
    )


def _lines(text: str) -> list[str]:
    if text and not text.endswith("\n"):
        text += "\n"
    return text.splitlines(keepends=True)


def _only(starts: list[int]) -> int | str | None:
    if len(starts) > 1:
        return "ambiguous"
    return starts[0] if starts else None


def _match_trailing(have: list[str], part: list[str], new: list[str]) -> str | None:
    n = len(part)
    wanted = [p.rstrip() for p in part]
    starts = range(len(have) - n + 1)
    at = _only([i for i in starts if [h.rstrip() for h in have[i : i + n]] == wanted])
    if at is None or isinstance(at, str):
        return at
    return "".join(have[:at] + new + have[at + n :])


def _match_indented(have: list[str], part: list[str], new: list[str]) -> str | None:
    """SEARCH and REPLACE indented by the same wrong amount: outdent both as far as they share,
    find the lines under one added indentation, and indent the replacement by it."""
    widths = [len(p) - len(p.lstrip()) for p in part + new if p.strip()]
    cut = min(widths) if widths else 0
    part = [p[cut:] if p.strip() else p for p in part]
    new = [p[cut:] if p.strip() else p for p in new]
    n = len(part)
    matches: list[tuple[int, str]] = []
    for i in range(len(have) - n + 1):
        prefix = _common_prefix(have[i : i + n], part)
        if prefix is not None:
            matches.append((i, prefix))
    at = _only([i for i, _ in matches])
    if at is None or isinstance(at, str):
        return at
    prefix = dict(matches)[at]
    shifted = [prefix + line if line.strip() else line for line in new]
    return "".join(have[:at] + shifted + have[at + n :])


def _common_prefix(chunk: list[str], part: list[str]) -> str | None:
    """The one whitespace prefix that turns every non-blank `part` line into its `chunk` line."""
    prefixes = set()
    for line, want in zip(chunk, part, strict=True):
        if not want.strip():
            if line.strip():
                return None
            continue
        if not line.rstrip().endswith(want.rstrip()) or line.rstrip() == "":
            return None
        prefix = line.rstrip()[: len(line.rstrip()) - len(want.rstrip())]
        if prefix.strip():
            return None
        prefixes.add(prefix)
    return prefixes.pop() if len(prefixes) == 1 else None


def _editable(ws: Workspace, path: str, max_file_bytes: int) -> str:
    """The text of an existing file the model may edit (ws.read refuses binary and non-regular
    files)."""
    entry = ws.entries.get(path)
    if entry is not None and path not in ws.edits:
        blob = ws.r[entry.id]
        assert isinstance(blob, pygit2.Blob)
        if blob.size > max_file_bytes:
            raise ChangeRequestInvalid(f"{path} is larger than {max_file_bytes} bytes")
    return ws.read(path)
