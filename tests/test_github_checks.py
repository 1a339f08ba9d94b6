"""The rules that make one verdict of a commit's check runs and commit statuses (pure, no I/O):
worst state wins, the latest report per name counts, silence is the policy's call, the time
limit ends a wait, and the verdict names each check with its link."""

from datetime import timedelta

import pytest

from activities.github_checks import (
    check_run,
    combine,
    commit_status,
    decide,
    latest_per_name,
    policy_for,
    verification_problems,
)
from workflows.contracts.github import (
    CheckState,
    SilencePolicy,
    VerdictReason,
    VerificationPolicy,
)

POLICY = VerificationPolicy(time_limit=timedelta(minutes=10), grace=timedelta(minutes=1))
NOW = timedelta(seconds=5)


@pytest.mark.parametrize(
    ("status", "conclusion", "state"),
    [
        ("queued", None, CheckState.PENDING),
        ("in_progress", None, CheckState.PENDING),
        ("completed", "success", CheckState.SUCCESS),
        ("completed", "neutral", CheckState.SUCCESS),
        ("completed", "skipped", CheckState.SUCCESS),
        ("completed", "failure", CheckState.FAILURE),
        ("completed", "timed_out", CheckState.FAILURE),
        ("completed", "cancelled", CheckState.FAILURE),
        ("completed", "action_required", CheckState.FAILURE),
        ("completed", "startup_failure", CheckState.FAILURE),
    ],
)
def test_a_check_runs_state_follows_its_status_and_conclusion(
    status: str, conclusion: str | None, state: CheckState
) -> None:
    assert check_run("ci", status, conclusion, None).state is state


@pytest.mark.parametrize(
    ("github", "state"),
    [
        ("success", CheckState.SUCCESS),
        ("pending", CheckState.PENDING),
        ("failure", CheckState.FAILURE),
        ("error", CheckState.FAILURE),
    ],
)
def test_a_commit_status_maps_onto_the_same_three_states(github: str, state: CheckState) -> None:
    assert commit_status("ci", github, None).state is state


def test_the_worst_state_wins_and_nothing_is_none() -> None:
    green = check_run("build", "completed", "success", None)
    waiting = commit_status("deploy-preview", "pending", None)
    red = commit_status("lint", "failure", None)
    assert combine([green]) is CheckState.SUCCESS
    assert combine([green, waiting]) is CheckState.PENDING
    assert combine([green, waiting, red]) is CheckState.FAILURE
    assert combine([]) is None


def test_only_the_latest_report_of_each_name_counts() -> None:
    # Commit statuses come newest first: a success after an earlier failure passes.
    latest = latest_per_name(
        [commit_status("lint", "success", None), commit_status("lint", "failure", None)]
    )
    assert [(c.name, c.state) for c in latest] == [("lint", CheckState.SUCCESS)]
    # A check run and a status of the same name are two checks.
    both = latest_per_name(
        [check_run("ci", "completed", "success", None), commit_status("ci", "pending", None)]
    )
    assert len(both) == 2 and combine(both) is CheckState.PENDING


def test_check_runs_green_with_no_status_at_all_pass() -> None:
    verdict = decide(
        "a" * 40, [check_run("ci", "completed", "success", None)], elapsed=NOW, policy=POLICY
    )
    assert (verdict.reason, verdict.ok, verdict.done) == (VerdictReason.PASSED, True, True)


def test_a_failure_decides_at_once_even_with_others_pending() -> None:
    checks = [
        check_run("build", "in_progress", None, None),
        commit_status("lint", "error", "https://ci.example/lint/3"),
    ]
    verdict = decide("b" * 40, checks, elapsed=NOW, policy=POLICY)
    assert (verdict.reason, verdict.ok) == (VerdictReason.FAILED, False)
    assert (
        verdict.summary() == "bbbbbbbbbbbb: failed checks: lint: error (https://ci.example/lint/3)"
    )


def test_pending_checks_wait_until_the_time_limit_then_time_out_naming_them() -> None:
    checks = [check_run("e2e", "in_progress", None, "https://ci.example/e2e")]
    waiting = decide("c" * 40, checks, elapsed=timedelta(minutes=9), policy=POLICY)
    assert (waiting.reason, waiting.done) == (VerdictReason.WAITING, False)
    late = decide("c" * 40, checks, elapsed=timedelta(minutes=10), policy=POLICY)
    assert (late.reason, late.ok) == (VerdictReason.TIMED_OUT, False)
    assert "e2e: in_progress (https://ci.example/e2e)" in late.summary()


def test_silence_waits_for_the_grace_period_then_the_policy_decides() -> None:
    assert decide("d" * 40, [], elapsed=NOW, policy=POLICY).reason is VerdictReason.WAITING
    after = timedelta(minutes=1)
    passes = decide("d" * 40, [], elapsed=after, policy=POLICY)
    assert (passes.reason, passes.ok) == (VerdictReason.NOTHING_REPORTED, True)
    strict = POLICY.model_copy(update={"on_silence": SilencePolicy.FAIL})
    fails = decide("d" * 40, [], elapsed=after, policy=strict)
    assert (fails.reason, fails.ok) == (VerdictReason.NOTHING_REPORTED, False)
    assert "failed by policy" in fails.summary()


def test_a_time_limit_shorter_than_the_grace_still_ends_the_wait() -> None:
    policy = VerificationPolicy(time_limit=timedelta(seconds=30), grace=timedelta(minutes=5))
    verdict = decide("e" * 40, [], elapsed=timedelta(seconds=30), policy=policy)
    assert verdict.done and verdict.reason is VerdictReason.NOTHING_REPORTED


def test_each_environment_has_its_policy_from_the_connectors_config() -> None:
    config = {
        "verification": {
            "staging": {"time_limit_s": 600, "on_silence": "fail"},
            "production": {"time_limit_s": 3600, "grace_s": 30},
        }
    }
    staging, production = policy_for(config, "staging"), policy_for(config, "production")
    assert (staging.time_limit, staging.on_silence) == (timedelta(minutes=10), SilencePolicy.FAIL)
    assert (production.time_limit, production.grace) == (timedelta(hours=1), timedelta(seconds=30))
    assert production.on_silence is SilencePolicy.PASS_AFTER_GRACE
    assert policy_for({}, "staging") == VerificationPolicy()
    assert verification_problems(config) == []
    assert verification_problems({"verification": {"staging": {"time_limit_s": -1}}}) == [
        "verification.staging.time_limit_s must be a positive number"
    ]
    assert verification_problems({"verification": {"staging": {"on_silence": "wait"}}}) == [
        "verification.staging.on_silence must be pass_after_grace or fail"
    ]
    assert verification_problems({"verification": {"staging": {"retries": 3}}}) == [
        "verification.staging takes only grace_s, on_silence, time_limit_s"
    ]
