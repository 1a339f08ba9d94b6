"""What verifies a change, so that a change can never switch off its own verification.

Two kinds of file decide whether a release is judged healthy:
- the files the project's check command runs: the scripts its words name (parsed like a shell
  parses them), the Python modules those import inside the repository (followed with `ast`),
  the scripts a shell script runs, the Makefile or package.json of `make` and `npm`;
- files that verify by their kind wherever they are: CI configuration, tests and test
  configuration, the project's own changeflow settings.

A change that touches one of them writes the code that judges it: its check could pass anything.
Files are resolved in every tree given (the base and the changed one), so a change that makes
the check import a module it adds, or shadows one it imports, is seen too. Everything here is
pure: the trees are read through `Reader`s (activities.git_store.tree_reader in the engines).
"""

import ast
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from activities.diffs import FileDiff

# A repository path -> its text, or None when the tree has no such file.
Reader = Callable[[str], str | None]

RUN_BY_CHECK = "run by the check command"
CI_CONFIGURATION = "CI configuration"
TEST_FILE = "a test file"
TEST_CONFIGURATION = "test configuration"
CHANGEFLOW_SETTINGS = "the project's changeflow settings"

CI_PATH = re.compile(
    r"^(\.github/(workflows|actions)/|\.circleci/|\.buildkite/|\.gitlab/ci/|\.woodpecker/)"
    r"|^(\.gitlab-ci\.ya?ml|Jenkinsfile|\.travis\.ya?ml|azure-pipelines\.ya?ml"
    r"|bitbucket-pipelines\.ya?ml|\.drone\.ya?ml|\.woodpecker\.ya?ml|\.cirrus\.ya?ml)$"
)
TEST_PATH = re.compile(
    r"(^|/)(tests?|__tests__|spec)/|(^|/)test_[^/]+$|_test\.\w+$|\.(test|spec)\.\w+$", re.I
)
# Files that configure how tests run, wherever they are.
TEST_CONFIG_PATH = re.compile(
    r"(^|/)(conftest\.py|pytest\.ini|tox\.ini|noxfile\.py|\.coveragerc|\.mocharc\.[\w.]+"
    r"|(jest|vitest|karma|playwright|cypress|ava)\.conf(ig)?\.[\w.]+)$"
)
# Shared configuration files whose test sections alone configure the tests.
SECTIONED_CONFIG = {"setup.cfg", "pyproject.toml"}
TEST_SECTION = re.compile(r"^\[+\s*(tool:pytest|tool\.pytest|tool\.coverage|coverage:|tool\.tox)")
CHANGEFLOW_SETTINGS_PATH = re.compile(r"^(\.?changeflow\.(toml|ya?ml|json)|\.changeflow/.+)$")

# `make check`, `npm test`: the file that says what the tool runs.
TOOL_FILES = {
    "make": ("Makefile", "makefile", "GNUmakefile"),
    "gmake": ("Makefile", "makefile", "GNUmakefile"),
    "npm": ("package.json",),
    "yarn": ("package.json",),
    "pnpm": ("package.json",),
    "tox": ("tox.ini",),
    "nox": ("noxfile.py",),
    "just": ("justfile", "Justfile"),
}
SHELL_SCRIPT = re.compile(r"\.(sh|bash)$")
SHELL_SHEBANG = re.compile(r"^#!.*\b(ba|z|da)?sh\b")
PYTHON_SHEBANG = re.compile(r"^#!.*\bpython")
# A script's string naming another script it runs (subprocess, runpy): followed too.
SCRIPT_LITERAL = re.compile(r"^[\w./-]+\.(py|sh|bash)$")
# Bounds on following: a check that pulls in the whole repository is still judged quickly.
MAX_FOLLOWED = 500
MAX_COMMAND_DEPTH = 4


def verification_changes(
    files: Iterable[FileDiff], *, check_command: str, trees: Sequence[Reader]
) -> dict[str, str]:
    """The changed files that are part of what verifies the change, each with why."""
    run = check_command_files(check_command, trees)
    found: dict[str, str] = {}
    for f in files:
        why = run.get(f.path) or kind_of_verifier(f, trees)
        if why:
            found[f.path] = why
    return found


def check_command_files(check_command: str, trees: Sequence[Reader]) -> dict[str, str]:
    """Every file of the repository the check command runs, in any of the trees, with why."""
    found: dict[str, str] = {}
    for read in trees:
        for path, why in _followed(check_command, read).items():
            found.setdefault(path, why)
    return found


def kind_of_verifier(f: FileDiff, trees: Sequence[Reader]) -> str | None:
    """Why a changed file verifies by its kind (CI, tests, test configuration, settings)."""
    path = f.path
    if CI_PATH.search(path):
        return CI_CONFIGURATION
    if TEST_CONFIG_PATH.search(path):
        return TEST_CONFIGURATION
    if TEST_PATH.search(path):
        return TEST_FILE
    if CHANGEFLOW_SETTINGS_PATH.search(path):
        return CHANGEFLOW_SETTINGS
    if posixpath.basename(path) in SECTIONED_CONFIG and _changes_test_section(f, trees):
        return TEST_CONFIGURATION
    return None


def _changes_test_section(f: FileDiff, trees: Sequence[Reader]) -> bool:
    """Whether a changed line of setup.cfg / pyproject.toml lies in a test section of the file
    before or after (compared by content: a line also found elsewhere counts, erring safe)."""
    in_sections: set[str] = set()
    for read in trees:
        text = read(f.path)
        if text is not None:
            in_sections |= _test_section_lines(text)
    return any(line.strip() in in_sections for line in f.added + f.removed if line.strip())


def _test_section_lines(text: str) -> set[str]:
    lines: set[str] = set()
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = bool(TEST_SECTION.match(line))
        if inside and line:
            lines.add(line)
    return lines


def _followed(check_command: str, read: Reader) -> dict[str, str]:
    """The files one tree's check command runs: its scripts, then what they import or run."""
    found: dict[str, str] = {}
    queue = [(path, RUN_BY_CHECK) for path in command_paths(check_command, read)]
    while queue and len(found) < MAX_FOLLOWED:
        path, why = queue.pop(0)
        if path in found:
            continue
        found[path] = why
        text = read(path)
        if text is None:
            continue
        if path.endswith(".py") or PYTHON_SHEBANG.match(text):
            queue += [(p, f"imported by {path}") for p in python_imports(path, text, read)]
            queue += [(p, f"run by {path}") for p in _script_literals(path, text, read)]
        elif SHELL_SCRIPT.search(path) or SHELL_SHEBANG.match(text):
            for line in text.splitlines():
                queue += [(p, f"run by {path}") for p in command_paths(line, read)]
    return found


def command_paths(command: str, read: Reader, *, depth: int = 0) -> list[str]:
    """The repository files a shell command line names: script paths (`python -I check.py`,
    `./run.sh`, `sh -c '...'`), modules run with `-m`, and the files of `make`, `npm` & co."""
    if depth > MAX_COMMAND_DEPTH:
        return []
    words = _shell_words(command)
    paths: list[str] = []
    for index, word in enumerate(words):
        if word.startswith("#"):
            break  # a comment: the rest of the line runs nothing
        previous = words[index - 1] if index else ""
        if previous == "-m":
            paths += module_paths(word, roots=[""], read=read)
            continue
        if any(space in word for space in " \t\n;&|"):
            paths += command_paths(word, read, depth=depth + 1)
            continue
        tool = posixpath.basename(word)
        if tool in TOOL_FILES and (not previous or previous in _SEPARATORS):
            paths += [name for name in TOOL_FILES[tool] if read(name) is not None]
        if word.startswith("-"):
            word = word.partition("=")[2]  # --config=ci/check.toml names a file too
        if (path := repository_path(word)) is not None and read(path) is not None:
            paths.append(path)
    return paths


_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "then", "do", "exec", "time", "sudo"}


def _shell_words(command: str) -> list[str]:
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = ""
        return list(lexer)
    except ValueError:  # unbalanced quotes: read it word by word
        return command.split()


def repository_path(word: str, relative_to: str = "") -> str | None:
    """`word` as a path inside the repository, or None (absolute, leaving it, or no path)."""
    if not word or word.startswith(("/", "~", "$")) or "\0" in word:
        return None
    path = posixpath.normpath(posixpath.join(relative_to, word))
    if path in (".", "") or path == ".." or path.startswith("../"):
        return None
    return path


def module_paths(module: str, *, roots: Iterable[str], read: Reader) -> list[str]:
    """The files that importing `module` (dotted) from these directories runs: each package's
    __init__.py on the way and the module itself, those that exist."""
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
        return []
    parts = module.split(".")
    found: list[str] = []
    for root in roots:
        for depth in range(1, len(parts) + 1):
            stem = posixpath.join(root, *parts[:depth])
            for candidate in (f"{stem}/__init__.py", f"{stem}.py"):
                if read(candidate) is not None and candidate not in found:
                    found.append(candidate)
    return found


def python_imports(path: str, text: str, read: Reader) -> list[str]:
    """The repository modules a Python file imports, as Python would find them: next to the
    script (sys.path[0]), from the repository's root (the check's working directory), and
    relative imports from the file's own package. Calls of importlib.import_module and
    __import__ with a literal name count too."""
    found: list[str] = []
    for name, bases in _python_references(path, text).imports:
        found += [p for p in module_paths(name, roots=bases, read=read) if p not in found]
    return found


def _script_literals(path: str, text: str, read: Reader) -> list[str]:
    """Scripts a Python file names in a string (`subprocess.run([sys.executable, "x.py"])`)."""
    found: list[str] = []
    for base, literal in _python_references(path, text).scripts:
        candidate = repository_path(literal, base)
        if candidate and candidate not in found and read(candidate) is not None:
            found.append(candidate)
    return found


@dataclass(frozen=True)
class PythonReferences:
    # (dotted module name, the directories it is looked up from)
    imports: tuple[tuple[str, tuple[str, ...]], ...]
    # (directory, string naming a script), looked up from the file's directory and the root
    scripts: tuple[tuple[str, str], ...]


@lru_cache(maxsize=256)
def _python_references(path: str, text: str) -> PythonReferences:
    """What a Python file imports and names, from one parse (cached: a check script is read
    again for every plan, and in both trees of one)."""
    try:
        tree = ast.parse(text, filename=path)
    except (SyntaxError, ValueError):
        return PythonReferences((), ())
    here = posixpath.dirname(path)
    roots = (here, "") if here else ("",)
    imports: list[tuple[str, tuple[str, ...]]] = []
    scripts: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [(alias.name, roots) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = here
            for _ in range(node.level - 1):
                package = posixpath.dirname(package)
            bases = (package,) if node.level else roots
            module = node.module or ""
            if module:
                imports.append((module, bases))
            imports += [(f"{module}.{a.name}" if module else a.name, bases) for a in node.names]
        elif isinstance(node, ast.Call) and _is_import_call(node):
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                imports.append((argument.value, roots))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if SCRIPT_LITERAL.match(node.value):
                scripts += [(base, node.value) for base in roots]
    return PythonReferences(tuple(imports), tuple(scripts))


def _is_import_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__", "run_module") and bool(node.args)
