"""How a commit's checks on GitHub become one verdict: pure rules, no I/O, no Temporal.

GitHub reports a commit's health two ways: check runs (GitHub Actions and other Apps) and
commit statuses (older CI, external services). Both are read and combined, the worst state
wins: one failure fails the commit, else one pending keeps it pending, else it passed.

The trap this module exists for: the *combined status* GitHub computes counts commit statuses
only, and with none it is `pending` with `total_count: 0`, even when every check run succeeded
(a repository on GitHub Actions alone). A gate on it alone waits forever, so it is never read
here; the individual statuses are.

When nothing reports at all, the project's policy decides (SilencePolicy): pass once a grace
period has gone by with still nothing, or fail. Every environment has a time limit: checks still
pending at it end the verification as TIMED_OUT, naming the ones that never finished. The
models (Check, ChecksVerdict, VerificationPolicy) live in workflows/contracts/github.py.
"""

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from workflows.contracts.github import (
    Check,
    CheckKind,
    CheckState,
    ChecksVerdict,
    SilencePolicy,
    VerdictReason,
    VerificationPolicy,
)

WORST_ORDER = {CheckState.SUCCESS: 0, CheckState.PENDING: 1, CheckState.FAILURE: 2}

# A completed check run's conclusion (GitHub's `check-run` schema). `neutral` and `skipped` do
# not block a merge on GitHub either; every other conclusion means the check did not pass.
PASSING_CONCLUSIONS = frozenset({"success", "neutral", "skipped"})
# A commit status's state: `error` is a failure to run the check, no better than a failure.
STATUS_STATES = {
    "success": CheckState.SUCCESS,
    "pending": CheckState.PENDING,
    "failure": CheckState.FAILURE,
    "error": CheckState.FAILURE,
}


def check_run(name: str, status: str, conclusion: str | None, details_url: str | None) -> Check:
    """A check run: pending until `status` is completed, then passed or failed by conclusion."""
    if status != "completed":
        state, word = CheckState.PENDING, status
    else:
        word = conclusion or "completed"
        state = CheckState.SUCCESS if word in PASSING_CONCLUSIONS else CheckState.FAILURE
    return Check(
        name=name, kind=CheckKind.CHECK_RUN, state=state, details_url=details_url, github_state=word
    )


def commit_status(context: str, state: str, target_url: str | None) -> Check:
    return Check(
        name=context,
        kind=CheckKind.STATUS,
        state=STATUS_STATES.get(state, CheckState.FAILURE),
        details_url=target_url,
        github_state=state,
    )


def latest_per_name(checks: Iterable[Check]) -> list[Check]:
    """One check per (kind, name): the first seen wins, as GitHub lists newest first (commit
    statuses) or only the latest run per name (check runs, `filter=latest`)."""
    seen: dict[tuple[CheckKind, str], Check] = {}
    for check in checks:
        seen.setdefault((check.kind, check.name), check)
    return sorted(seen.values(), key=lambda c: (c.name, c.kind.value))


def combine(checks: Iterable[Check]) -> CheckState | None:
    """The worst state of the checks; None when there are none (nothing reported)."""
    states = [c.state for c in checks]
    if not states:
        return None
    return max(states, key=WORST_ORDER.__getitem__)


def decide(
    sha: str, checks: Iterable[Check], *, elapsed: timedelta, policy: VerificationPolicy
) -> ChecksVerdict:
    """The verdict on `checks` seen `elapsed` after the verification started."""
    latest = latest_per_name(checks)
    state = combine(latest)
    if state is CheckState.FAILURE:
        reason = VerdictReason.FAILED
    elif state is CheckState.SUCCESS:
        reason = VerdictReason.PASSED
    elif state is None and elapsed >= min(policy.grace, policy.time_limit):
        reason = VerdictReason.NOTHING_REPORTED
    elif elapsed >= policy.time_limit:
        reason = VerdictReason.TIMED_OUT
    else:
        reason = VerdictReason.WAITING
    ok = reason is VerdictReason.PASSED or (
        reason is VerdictReason.NOTHING_REPORTED
        and policy.on_silence is SilencePolicy.PASS_AFTER_GRACE
    )
    return ChecksVerdict(sha=sha, reason=reason, ok=ok, checks=latest)


# A connector's `verification` config: per environment, what GitHub's checks may take.
#   {"staging": {"time_limit_s": 1800, "grace_s": 120, "on_silence": "pass_after_grace"}, ...}
VERIFICATION_KEYS = {"time_limit_s", "grace_s", "on_silence"}


def policy_for(config: dict[str, Any], environment: str) -> VerificationPolicy:
    """The environment's verification policy from a connector's config (defaults otherwise)."""
    given = (config.get("verification") or {}).get(environment) or {}
    policy = VerificationPolicy()
    return VerificationPolicy(
        time_limit=timedelta(
            seconds=float(given.get("time_limit_s", policy.time_limit.total_seconds()))
        ),
        grace=timedelta(seconds=float(given.get("grace_s", policy.grace.total_seconds()))),
        on_silence=SilencePolicy(given.get("on_silence", policy.on_silence.value)),
    )


def verification_problems(config: dict[str, Any]) -> list[str]:
    """What is wrong with a connector's `verification` config, as sentences."""
    verification = config.get("verification")
    if verification is None:
        return []
    if not isinstance(verification, dict):
        return ["verification must map environments to their policies"]
    problems = []
    for environment, given in verification.items():
        if not isinstance(given, dict) or not set(given) <= VERIFICATION_KEYS:
            problems.append(
                f"verification.{environment} takes only {', '.join(sorted(VERIFICATION_KEYS))}"
            )
            continue
        for key in ("time_limit_s", "grace_s"):
            value = given.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                problems.append(f"verification.{environment}.{key} must be a positive number")
        if given.get("on_silence", SilencePolicy.FAIL.value) not in {
            p.value for p in SilencePolicy
        }:
            names = " or ".join(p.value for p in SilencePolicy)
            problems.append(f"verification.{environment}.on_silence must be {names}")
    return problems
