"""A change can never switch off its own verification: which files verify a change (what the
check command runs, CI, tests, settings), the risk they give a plan, and the policy rule that
such a plan is never approved by the system. Pure rules, plus one real repository."""

import uuid
from collections.abc import Sequence
from pathlib import Path

import pygit2
import pytest

from activities.git_store import Workspace, diff_trees
from activities.risk import (
    MAX_VERIFICATION_REASONS,
    assess_change,
    assess_risk,
    changes_to_verification,
)
from activities.verification import Reader, check_command_files
from models.lifecycle import PlanApprovalStatus, RiskLevel
from scripts.sample_repo import SAMPLE_CHECK_COMMAND, create_sample_repo
from workflows.contracts.lifecycle import ApprovalPolicyView, PlanSummary

CHECK = "/usr/bin/python3 -I check.py"

# A storefront whose check imports helpers of its own.
REPOSITORY = {
    "check.py": "import json\nimport checks.rules\nfrom checks import money\n",
    "checks/__init__.py": "",
    "checks/rules.py": "from . import common\nfrom .deep.inner import x\n",
    "checks/common.py": "import os\n",
    "checks/money.py": "VALUE = 1\n",
    "checks/deep/__init__.py": "",
    "checks/deep/inner.py": "x = 1\n",
    "checks/unused.py": "nobody imports this\n",
    "config.json": '{"theme": "light"}\n',
    "app/views.py": "import checks.money\n",
    "scripts/verify.py": "import subprocess, sys\nsubprocess.run([sys.executable, 'lint.py'])\n",
    "lint.py": "print('ok')\n",
    "run_checks.sh": "#!/bin/sh\nset -e\npython3 scripts/verify.py  # the real work\n",
    "Makefile": "check:\n\tpython3 check.py\n",
    "package.json": '{"scripts": {"test": "jest"}}\n',
    "ci/check.toml": "strict = true\n",
}


def reader(files: dict[str, str]) -> Reader:
    return files.get


def diff_of(path: str, added: Sequence[str], removed: Sequence[str] = ()) -> str:
    header = f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n"
    return header + "".join(f"-{line}\n" for line in removed) + "".join(f"+{a}\n" for a in added)


def reasons_for(path: str, *, command: str = CHECK, new: dict[str, str] | None = None) -> list[str]:
    trees = [reader(REPOSITORY), reader(new or REPOSITORY)]
    level, reasons = assess_risk(diff_of(path, ["x = 2"]), check_command=command, trees=trees)
    verification = changes_to_verification(reasons)
    assert (level is RiskLevel.CRITICAL) == bool(verification), (level, reasons)
    return verification


# --- what the check command runs -------------------------------------------------------------


def test_a_change_to_the_check_script_is_critical_with_the_reason_named() -> None:
    level, reasons = assess_risk(
        diff_of("check.py", ["sys.exit(0)"], ["sys.exit(main())"]),
        check_command=CHECK,
        trees=[reader(REPOSITORY), reader(REPOSITORY)],
    )
    assert level is RiskLevel.CRITICAL
    assert reasons[0] == "changes what verifies it: check.py (run by the check command)"


def test_the_modules_the_check_imports_are_followed_inside_the_repository() -> None:
    found = check_command_files(CHECK, [reader(REPOSITORY)])
    assert found == {
        "check.py": "run by the check command",
        "checks/__init__.py": "imported by check.py",
        "checks/rules.py": "imported by check.py",
        "checks/money.py": "imported by check.py",
        "checks/common.py": "imported by checks/rules.py",
        "checks/deep/__init__.py": "imported by checks/rules.py",
        "checks/deep/inner.py": "imported by checks/rules.py",
    }
    assert reasons_for("checks/deep/inner.py") == [
        "checks/deep/inner.py (imported by checks/rules.py)"
    ]


@pytest.mark.parametrize(
    "path",
    ["checks/unused.py", "app/views.py", "config.json", "pages/about.md", "README.md", "lint.py"],
)
def test_files_the_check_does_not_run_are_not_verification(path: str) -> None:
    # config.json is what the check reads, not what it runs: changing it is the ordinary case.
    assert reasons_for(path) == []


def test_a_module_added_beside_the_check_that_shadows_an_import_is_verification() -> None:
    # `import json` in check.py finds ./json.py first once the change adds it.
    shadowed = {**REPOSITORY, "json.py": "import sys\nsys.exit(0)\n"}
    assert reasons_for("json.py", new=shadowed) == ["json.py (imported by check.py)"]
    # ...and a module the changed check newly imports counts in the changed tree.
    rewritten = {**REPOSITORY, "check.py": "import always_ok\n", "always_ok.py": ""}
    assert reasons_for("always_ok.py", new=rewritten) == ["always_ok.py (imported by check.py)"]


@pytest.mark.parametrize(
    ("command", "path", "why"),
    [
        ("sh -c './run_checks.sh'", "run_checks.sh", "run by the check command"),
        ("sh -c './run_checks.sh'", "scripts/verify.py", "run by run_checks.sh"),
        ("sh -c './run_checks.sh'", "lint.py", "run by scripts/verify.py"),
        ("sleep 1 && python3 -m checks.rules", "checks/rules.py", "run by the check command"),
        ("python3 -m checks.rules", "checks/common.py", "imported by checks/rules.py"),
        ("make check", "Makefile", "run by the check command"),
        ("npm test", "package.json", "run by the check command"),
        ("python3 check.py --config=ci/check.toml", "ci/check.toml", "run by the check command"),
        ("cd . && python3 ./check.py", "check.py", "run by the check command"),
    ],
)
def test_the_check_command_is_read_like_a_shell_reads_it(command: str, path: str, why: str) -> None:
    assert reasons_for(path, command=command) == [f"{path} ({why})"]


@pytest.mark.parametrize(
    "command",
    ["", "/opt/check/run.py", "python3 ../check.py", "python3 'unbalanced", "echo check.py.bak"],
)
def test_paths_outside_the_repository_or_absent_name_nothing(command: str) -> None:
    assert check_command_files(command, [reader(REPOSITORY)]) == {}


# --- what verifies by its kind ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (".github/workflows/ci.yml", "CI configuration"),
        (".github/actions/setup/action.yml", "CI configuration"),
        (".gitlab-ci.yml", "CI configuration"),
        ("Jenkinsfile", "CI configuration"),
        (".circleci/config.yml", "CI configuration"),
        ("tests/test_pages.py", "a test file"),
        ("tests/fixtures/orders.json", "a test file"),
        ("shop/test_cart.py", "a test file"),
        ("cart/cart_test.go", "a test file"),
        ("web/cart.spec.ts", "a test file"),
        ("conftest.py", "test configuration"),
        ("shop/conftest.py", "test configuration"),
        ("pytest.ini", "test configuration"),
        ("tox.ini", "test configuration"),
        ("jest.config.js", "test configuration"),
        (".changeflow.toml", "the project's changeflow settings"),
        (".changeflow/policy.yml", "the project's changeflow settings"),
    ],
)
def test_ci_tests_test_configuration_and_changeflow_settings_verify_by_their_kind(
    path: str, why: str
) -> None:
    assert reasons_for(path, command="") == [f"{path} ({why})"]


SETUP_CFG = "[metadata]\nname = shop\nversion = 1.0\n\n[tool:pytest]\naddopts = -q\n"
PYPROJECT = '[project]\nname = "shop"\n\n[tool.pytest.ini_options]\naddopts = "-q"\n'


@pytest.mark.parametrize(
    ("path", "before", "removed", "added", "verifies"),
    [
        ("setup.cfg", SETUP_CFG, "addopts = -q", "addopts = -q -p no:cacheprovider", True),
        ("setup.cfg", SETUP_CFG, "version = 1.0", "version = 1.1", False),
        ("pyproject.toml", PYPROJECT, 'addopts = "-q"', 'addopts = "-q --co"', True),
        ("pyproject.toml", PYPROJECT, 'name = "shop"', 'name = "storefront"', False),
    ],
)
def test_shared_config_files_verify_only_in_their_test_sections(
    path: str, before: str, removed: str, added: str, verifies: bool
) -> None:
    trees = [reader({path: before}), reader({path: before.replace(removed, added)})]
    _, reasons = assess_risk(diff_of(path, [added], [removed]), trees=trees)
    assert changes_to_verification(reasons) == (
        [f"{path} (test configuration)"] if verifies else []
    )


def test_many_changed_test_files_are_listed_up_to_a_limit() -> None:
    count = MAX_VERIFICATION_REASONS + 5
    diff = "".join(diff_of(f"tests/test_{i}.py", ["assert True"]) for i in range(count))
    level, reasons = assess_risk(diff)
    listed = changes_to_verification(reasons)
    assert level is RiskLevel.CRITICAL
    assert len(listed) == MAX_VERIFICATION_REASONS + 1
    assert listed[-1] == "5 more files"


# --- on a real repository (what the engines call) --------------------------------------------


def test_a_check_rewritten_to_always_pass_in_a_real_repository_is_critical(
    tmp_path: Path,
) -> None:
    r = pygit2.Repository(str(create_sample_repo(tmp_path / "shop")))
    base = r.revparse_single("main").peel(pygit2.Commit)
    ws = Workspace(r, base)
    ws.write("check.py", "import sys\nsys.exit(0)\n")
    changed = str(ws.write_tree())
    diff = diff_trees(r, base.tree_id, changed).patch

    level, reasons = assess_change(
        r, diff, base=str(base.id), changed=changed, check_command=SAMPLE_CHECK_COMMAND
    )

    assert level is RiskLevel.CRITICAL
    assert reasons[0] == "changes what verifies it: check.py (run by the check command)"
    # The same diff in a project whose check runs something else is an ordinary small change
    # (as every project's was rated before the check's own files counted).
    other, _ = assess_change(r, diff, base=str(base.id), changed=changed, check_command="true")
    assert other is RiskLevel.LOW


# --- the policy: never approved by the system ------------------------------------------------


def plan(level: RiskLevel, changes_verification: list[str]) -> PlanSummary:
    return PlanSummary(
        plan_id=uuid.uuid4(),
        revision=1,
        diff_summary="",
        files_changed=[],
        risk_level=level,
        risk_reasons=[],
        token_estimate=1,
        content_hash="h",
        approval_status=PlanApprovalStatus.PENDING,
        approvals_required=2,
        changes_verification=changes_verification,
    )


@pytest.mark.parametrize("ceiling", [RiskLevel.LOW, RiskLevel.CRITICAL, None])
def test_a_plan_that_changes_its_verification_is_never_approved_by_the_system(
    ceiling: RiskLevel | None,
) -> None:
    policy = ApprovalPolicyView(
        approver_roles=["client_admin"],
        approvals_required={"critical": 3},
        auto_approve_max_risk=ceiling,
        plan_ttl_seconds=60,
        overspend_tolerance_pct=20,
    )
    verifying = plan(RiskLevel.CRITICAL, ["check.py (run by the check command)"])
    assert not policy.auto_approves(
        verifying.risk_level, changes_verification=bool(verifying.changes_verification)
    )
    # The ceiling alone would have let a critical plan through; people decide it, three of them.
    assert policy.auto_approves(RiskLevel.CRITICAL) is (ceiling is RiskLevel.CRITICAL)
    assert policy.required_for(verifying.risk_level) == 3
