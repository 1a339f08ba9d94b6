"""The risk of a change, from the facts of its unified diff and of what verifies it
(`assess_risk`); every change engine rates its plans here (`assess_change`)."""

import re
from collections.abc import Sequence

import pygit2

from activities.diffs import parse_unified_diff
from activities.git_store import tree_reader
from activities.verification import TEST_PATH, Reader, verification_changes
from models.lifecycle import RiskLevel

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
SKIP_MARKER = re.compile(
    r"pytest\.mark\.(skip|xfail)|unittest\.skip|\.skip\(|\bxit\(|\bxdescribe\(|@Disabled|t\.Skip\("
)
TEST_CASE = re.compile(r"\bdef test_|\b(it|test|describe)\(\s*['\"]|@Test\b")

LARGE_DIFF_LINES = 400
HUGE_DIFF_LINES = 1000
MANY_FILES = 20

# The reason a change that touches what verifies it is given, one per file (activities.
# verification says which files); `changes_to_verification` reads them back.
CHANGES_VERIFICATION = "changes what verifies it: "
MAX_VERIFICATION_REASONS = 20


def assess_change(
    r: pygit2.Repository, diff: str, *, base: str, changed: str, check_command: str
) -> tuple[RiskLevel, list[str]]:
    """The risk of `diff` from tree-ish `base` to tree-ish `changed` of a project whose
    releases are verified by `check_command`: what the check runs is resolved in both trees."""
    trees = [tree_reader(r, base), tree_reader(r, changed)]
    return assess_risk(diff, check_command=check_command, trees=trees)


def assess_risk(
    diff: str, *, check_command: str = "", trees: Sequence[Reader] = ()
) -> tuple[RiskLevel, list[str]]:
    """The risk of a unified diff and the reasons for it, from the diff's facts and from what
    verifies it (the check command's files resolved in `trees`, CI, tests, settings).

    CRITICAL: changing what verifies the change (it could pass anything, so no other finding
    matters), rewriting an existing migration, destructive SQL, or two HIGH findings at once.
    HIGH: checkout/payment paths or config keys, a new migration, a deleted test file, a diff of
    more than HUGE_DIFF_LINES lines. MEDIUM: skipped or removed test cases, a deleted file,
    more than LARGE_DIFF_LINES lines or MANY_FILES files. Otherwise LOW.
    """
    findings: list[tuple[RiskLevel, str]] = []
    files = parse_unified_diff(diff)
    verifiers = list(verification_changes(files, check_command=check_command, trees=trees).items())
    for path, why in verifiers[:MAX_VERIFICATION_REASONS]:
        findings.append((RiskLevel.CRITICAL, f"{CHANGES_VERIFICATION}{path} ({why})"))
    if len(verifiers) > MAX_VERIFICATION_REASONS:
        more = len(verifiers) - MAX_VERIFICATION_REASONS
        findings.append((RiskLevel.CRITICAL, f"{CHANGES_VERIFICATION}{more} more files"))
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


def changes_to_verification(reasons: Sequence[str]) -> list[str]:
    """What a plan changes of its own verification, from its risk reasons: "check.py (run by
    the check command)", one per file; empty when it changes none of it."""
    return [
        r.removeprefix(CHANGES_VERIFICATION) for r in reasons if r.startswith(CHANGES_VERIFICATION)
    ]
