"""Unified diffs (git's format) read back as facts: which files, which lines added and removed.

The risk assessor reads these facts, and a rebased change is compared with the approved one by
its changed lines alone (`same_changed_lines`).
"""

import re
from dataclasses import dataclass, field


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
            current = FileDiff(path=_new_path(line))
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


def _new_path(header: str) -> str:
    """The `b/` path of a `diff --git a/... b/...` line; git quotes a path with unusual
    characters ("b/t\\303\\251st.md"), which is read back to the path itself."""
    if header.endswith('"') and (start := header.rfind(' "b/')) != -1:
        return _unquote(header[start + 1 :]).removeprefix("b/")
    _, _, rest = header.partition(" b/")
    return rest or header.split()[-1]


_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _unquote(quoted: str) -> str:
    out = bytearray()
    body = quoted[1:-1]
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            if re.match(r"[0-7]{3}", body[i + 1 : i + 4]):
                out.append(int(body[i + 1 : i + 4], 8))
                i += 4
                continue
            out.append(_ESCAPES.get(body[i + 1], ord(body[i + 1])))
            i += 2
            continue
        out += char.encode()
        i += 1
    return out.decode(errors="replace")
