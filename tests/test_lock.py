"""Reproducible installs: uv.lock pins exactly what pyproject.toml asks for, every install path
(make, the image) installs from it unchanged, and `make lock-check` (CI) notices a pyproject.toml
that moved on without its lock."""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())


def _key(name: str, extras: Any, extra: str | None) -> tuple[str, ...]:
    return (canonicalize_name(name), ",".join(sorted(extras or ())), extra or "")


def asked_for() -> dict[tuple[str, ...], SpecifierSet]:
    """pyproject.toml's requirements: (name, extras, the extra they belong to) -> specifier."""
    project = PYPROJECT["project"]
    groups = [(None, project["dependencies"])]
    groups += list(project.get("optional-dependencies", {}).items())
    wanted = {}
    for extra, requirements in groups:
        for line in requirements:
            req = Requirement(line)
            wanted[_key(req.name, req.extras, extra)] = req.specifier
    return wanted


def locked_for_the_project() -> dict[tuple[str, ...], SpecifierSet]:
    (root,) = (p for p in LOCK["package"] if p["name"] == PYPROJECT["project"]["name"])
    locked = {}
    for entry in root["metadata"]["requires-dist"]:
        marker = entry.get("marker", "")
        extra = re.fullmatch(r"extra == '([\w-]+)'", marker)
        assert marker == "" or extra, f"unexpected marker {marker!r} in uv.lock"
        key = _key(entry["name"], entry.get("extras"), extra.group(1) if extra else None)
        locked[key] = SpecifierSet(entry.get("specifier", ""))
    return locked


def test_the_lock_was_resolved_from_this_pyproject() -> None:
    assert locked_for_the_project() == asked_for(), "pyproject.toml changed: run `make lock`"
    assert LOCK["requires-python"] == PYPROJECT["project"]["requires-python"]


def test_every_locked_package_is_one_version_with_hashed_artifacts() -> None:
    for package in LOCK["package"]:
        if package["name"] == PYPROJECT["project"]["name"]:
            assert package["source"] == {"editable": "."}
            continue
        assert package["source"] == {"registry": "https://pypi.org/simple"}, package["name"]
        artifacts = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        assert artifacts, f"{package['name']} has nothing to install"
        for artifact in artifacts:
            assert artifact["hash"].startswith("sha256:"), package["name"]


def test_every_install_path_uses_the_lock_unchanged() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\): pyproject\.toml uv\.lock", makefile, re.M)
    assert "$(UV) sync --frozen --extra dev" in makefile
    assert "pip install -q --disable-pip-version-check 'uv==$(UV_VERSION)'" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY pyproject.toml uv.lock" in dockerfile
    syncs = re.findall(r"^RUN uv sync (.*)$", dockerfile, re.M)
    assert syncs and all("--frozen" in sync for sync in syncs)
    ci = (ROOT / ".ci" / "run").read_text()
    for target in ("make lock-check", "make lint", "make test"):
        assert target in ci


def uv() -> str:
    """The uv `make` installed (or the one on the PATH it would use)."""
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(found).exists(), "uv is missing: run `make install`"
    return found


def lock_check(project: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    return subprocess.run(
        [uv(), "lock", "--check", "--project", str(project)],
        env={**env, "UV_PYTHON_DOWNLOADS": "never"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_lock_check_passes_on_this_checkout_and_fails_once_pyproject_moves_on(
    tmp_path: Path,
) -> None:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    agreed = lock_check(tmp_path)
    assert agreed.returncode == 0, agreed.stderr
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('"pygit2>=1.15",', '"pygit2>=1.15",\n    "idna>=3",', 1)
    )
    moved = lock_check(tmp_path)
    assert moved.returncode != 0
    assert "uv lock" in moved.stderr or "lockfile" in moved.stderr.lower()
    # The check never rewrites the lock.
    assert (tmp_path / "uv.lock").read_text() == (ROOT / "uv.lock").read_text()
