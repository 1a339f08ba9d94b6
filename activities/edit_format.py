"""The one edit format the model engine accepts: SEARCH/REPLACE blocks.

    path/inside/the/repository.txt
    <<<<<<< SEARCH
    lines copied exactly from the file
    =======
    the lines that replace them
    >>>>>>> REPLACE

SEARCH must match the file exactly once (whitespace included); an empty SEARCH creates a file
that does not exist yet. Text outside blocks is ignored. Blocks apply in order, each to the
file as the ones before it left it.

A block that does not apply is an `EditFailed` (its reason goes back to the model); a path the
engine never writes (outside the repository, into `.git`, a binary, non-regular or oversized
file) is a `ChangeRequestInvalid` that ends the plan: the model only proposes file edits.
"""

import re
from dataclasses import dataclass

import pygit2

from activities.change_engine import ChangeRequestInvalid
from activities.git_store import Workspace, check_tree_path

SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"

FORMAT_RULES = f"""Answer with edits only, as SEARCH/REPLACE blocks:

path/of/the/file
{SEARCH}
lines copied exactly from the file
{DIVIDER}
the lines that replace them
{REPLACE}

The SEARCH part must match the file exactly once. An empty SEARCH part creates a new file.
Use paths of the listing only (or new paths inside the repository). Edit text files only."""

_BLOCK = re.compile(
    rf"^(?P<path>[^\n]+)\n{re.escape(SEARCH)}\n(?P<search>.*?)^{DIVIDER}\n"
    rf"(?P<replace>.*?)^{re.escape(REPLACE)}$",
    re.M | re.S,
)


class EditFailed(Exception):
    """An answer whose edits do not apply; the message is the reason the model is told."""


@dataclass(frozen=True)
class Edit:
    path: str
    search: str
    replace: str


def parse_edits(answer: str) -> list[Edit]:
    edits = [
        Edit(m["path"].strip().strip("`"), m["search"], m["replace"])
        for m in _BLOCK.finditer(answer)
    ]
    if not edits:
        raise EditFailed(
            f"the answer holds no SEARCH/REPLACE block; every edit must be a block:\n{FORMAT_RULES}"
        )
    return edits


def apply_edits(ws: Workspace, edits: list[Edit], *, max_file_bytes: int) -> list[str]:
    """Apply `edits` to `ws`; one summary line per edited file."""
    touched: dict[str, str] = {}
    for number, edit in enumerate(edits, start=1):
        check_tree_path(edit.path)
        if "\0" in edit.replace:
            raise ChangeRequestInvalid(f"{edit.path}: binary content is refused")
        if not ws.exists(edit.path):
            if edit.search:
                raise EditFailed(
                    f"block {number}: {edit.path} does not exist; to create it, leave SEARCH empty"
                )
            text, verb = edit.replace, "created"
        else:
            current = _editable(ws, edit.path, max_file_bytes)
            if not edit.search:
                raise EditFailed(
                    f"block {number}: {edit.path} exists; SEARCH must quote the lines to replace"
                )
            found = current.count(edit.search)
            if found != 1:
                where = "does not occur" if found == 0 else f"occurs {found} times"
                raise EditFailed(
                    f"block {number}: the SEARCH text {where} in {edit.path}; copy the lines "
                    "exactly, with enough context to match once"
                )
            text, verb = current.replace(edit.search, edit.replace, 1), "edited"
        if len(text.encode()) > max_file_bytes:
            raise ChangeRequestInvalid(f"{edit.path} would exceed {max_file_bytes} bytes")
        ws.write(edit.path, text)
        touched.setdefault(edit.path, verb)
    return [f"{verb.capitalize()} {path}." for path, verb in touched.items()]


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
