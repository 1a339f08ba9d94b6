"""The built-in GitDeployTarget: environment branches, the release log, checks, rollbacks."""

import asyncio
import itertools
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from activities.deploy_target import (
    GitDeployTarget,
    InvalidEnvironment,
    ReleaseConflict,
    UnknownCommit,
    _append_json_line,
    _write_json,
)
from activities.git_change_engine import GitChangeEngine
from scripts.sample_repo import (
    FAILS_IN_PRODUCTION_PROMPT,
    FAILS_IN_STAGING_PROMPT,
    HIGH_RISK_PROMPT,
    OVERSPEND_PROMPT,
    SAFE_PROMPT,
    SAMPLE_CHECK_COMMAND,
    create_sample_repo,
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_sample_repo(tmp_path / "storefront")


@pytest.fixture
def target(tmp_path: Path) -> GitDeployTarget:
    return GitDeployTarget(tmp_path / "workspace")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


async def change(repo: Path, prompt: str) -> str:
    """The commit of `prompt` applied on main, on its own branch."""
    engine = GitChangeEngine()
    proposal = await engine.plan(repo=repo, base_branch="main", prompt=prompt)
    branch = f"change-{uuid.uuid4().hex[:8]}"
    applied = await engine.apply(repo=repo, proposal=proposal, prompt=prompt, branch=branch)
    return applied.commit_sha


def read(path: str) -> str:
    return Path(path).read_text()


def release_log(target: GitDeployTarget, repo: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in target.release_log(repo).read_text().splitlines()]


async def test_release_points_the_environment_branch_and_logs_it(
    repo: Path, target: GitDeployTarget
) -> None:
    main = git(repo, "rev-parse", "main")
    assert await target.current_release(repo=repo, environment="staging") is None
    first_id, second_id = uuid.uuid4(), uuid.uuid4()
    first = await target.release(
        repo=repo, environment="staging", commit_sha="main", deployment_id=first_id
    )
    assert (first.commit_sha, first.previous_commit_sha) == (main, None)
    commit = await change(repo, SAFE_PROMPT)
    second = await target.release(
        repo=repo, environment="staging", commit_sha=commit, deployment_id=second_id
    )
    assert (second.commit_sha, second.previous_commit_sha) == (commit, main)
    assert git(repo, "rev-parse", "env/staging") == commit
    assert await target.current_release(repo=repo, environment="staging") == commit
    assert await target.current_release(repo=repo, environment="production") is None
    assert second.log_path == str(target.release_log(repo))
    entries = release_log(target, repo)
    assert [(e["deployment_id"], e["commit_sha"], e["previous_commit_sha"]) for e in entries] == [
        (str(first_id), main, None),
        (str(second_id), commit, main),
    ]
    assert second.diff_path is not None
    assert '+  "theme": "dark",' in read(second.diff_path)
    # The working tree and main are untouched.
    assert git(repo, "rev-parse", "main") == main
    assert git(repo, "status", "--porcelain") == ""


async def test_releasing_again_for_the_same_deployment_changes_nothing(
    repo: Path, target: GitDeployTarget
) -> None:
    main = git(repo, "rev-parse", "main")
    await target.release(
        repo=repo, environment="production", commit_sha=main, deployment_id=uuid.uuid4()
    )
    commit = await change(repo, SAFE_PROMPT)
    deployment_id = uuid.uuid4()
    first = await target.release(
        repo=repo, environment="production", commit_sha=commit, deployment_id=deployment_id
    )
    again = await target.release(
        repo=repo, environment="production", commit_sha=commit, deployment_id=deployment_id
    )
    assert again == first
    assert again.previous_commit_sha == main  # the true previous release, not itself
    assert len(release_log(target, repo)) == 2
    with pytest.raises(ReleaseConflict, match="already released"):
        await target.release(
            repo=repo, environment="production", commit_sha=main, deployment_id=deployment_id
        )


@pytest.mark.parametrize("logged", [False, True])
async def test_a_release_interrupted_before_moving_the_branch_is_finished_by_its_retry(
    repo: Path, target: GitDeployTarget, logged: bool
) -> None:
    main = git(repo, "rev-parse", "main")
    deployment_id = uuid.uuid4()
    # The first attempt recorded the release (and maybe logged it), then died.
    entry: dict[str, str | None] = {
        "at": "2026-01-01T00:00:00+00:00",
        "deployment_id": str(deployment_id),
        "environment": "staging",
        "action": "release",
        "commit_sha": main,
        "previous_commit_sha": None,
    }
    _write_json(target.release_record(repo, deployment_id, "staging"), entry)
    if logged:
        _append_json_line(target.release_log(repo), entry)
    result = await target.release(
        repo=repo, environment="staging", commit_sha=main, deployment_id=deployment_id
    )
    assert (result.commit_sha, result.previous_commit_sha) == (main, None)
    assert git(repo, "rev-parse", "env/staging") == main
    # Logged exactly once either way.
    assert [e["deployment_id"] for e in release_log(target, repo)] == [str(deployment_id)]


async def test_rollback_releases_the_earlier_commit(repo: Path, target: GitDeployTarget) -> None:
    good = git(repo, "rev-parse", "main")
    bad = await change(repo, FAILS_IN_PRODUCTION_PROMPT)
    for commit in (good, bad):
        await target.release(
            repo=repo, environment="production", commit_sha=commit, deployment_id=uuid.uuid4()
        )
    rollback_id = uuid.uuid4()
    result = await target.rollback(
        repo=repo, environment="production", to_commit_sha=good, deployment_id=rollback_id
    )
    assert (result.commit_sha, result.previous_commit_sha) == (good, bad)
    assert await target.current_release(repo=repo, environment="production") == good
    assert release_log(target, repo)[-1]["action"] == "rollback"
    assert release_log(target, repo)[-1]["deployment_id"] == str(rollback_id)


@pytest.mark.parametrize(
    ("prompt", "staging_ok", "production_ok", "message"),
    [
        (SAFE_PROMPT, True, True, "storefront checks passed"),
        (OVERSPEND_PROMPT, True, True, "storefront checks passed"),
        (HIGH_RISK_PROMPT, True, True, "storefront checks passed"),
        (FAILS_IN_STAGING_PROMPT, False, False, "free_shipping_threshold must be a number >= 0"),
        (FAILS_IN_PRODUCTION_PROMPT, True, False, "debug must be off in production"),
    ],
)
async def test_verification_runs_the_check_in_each_environment(
    repo: Path,
    target: GitDeployTarget,
    prompt: str,
    staging_ok: bool,
    production_ok: bool,
    message: str,
) -> None:
    commit = await change(repo, prompt)
    results = {}
    for environment in ("staging", "production"):
        deployment_id = uuid.uuid4()
        started = time.monotonic()
        result = await target.verify(
            repo=repo,
            environment=environment,
            commit_sha=commit,
            check_command=SAMPLE_CHECK_COMMAND,
            deployment_id=deployment_id,
        )
        elapsed = time.monotonic() - started
        results[environment] = result
        assert Path(result.log_path).name == f"{deployment_id}-{environment}-verify.log"
        assert read(result.log_path).endswith(result.output)
        # The check's own run time, in seconds: within the call that ran it (not a wall-clock
        # bound, which a loaded machine would break).
        assert 0 < result.duration_s <= elapsed + 0.001
    assert (results["staging"].ok, results["production"].ok) == (staging_ok, production_ok)
    for result in results.values():
        assert (message in result.output) == (not result.ok or production_ok)
    # Checkouts are cleaned up; only logs stay.
    assert not any(target.workspace_dir.rglob("checkouts/*"))


async def test_the_check_sees_its_environment_and_not_the_workers_secrets(
    repo: Path, target: GitDeployTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://secret@db/prod")
    result = await target.verify(
        repo=repo,
        environment="production",
        commit_sha="main",
        check_command="env; git log -1 --format=%s; test -f config.json",
        deployment_id=uuid.uuid4(),
    )
    assert result.ok
    assert "CHANGEFLOW_ENVIRONMENT=production" in result.output
    assert f"CHANGEFLOW_COMMIT={git(repo, 'rev-parse', 'main')}" in result.output
    assert "Corner Shop storefront" in result.output  # a real checkout of the commit
    assert "secret" not in result.output


async def test_a_check_that_outlives_its_timeout_fails_and_is_killed(
    repo: Path, tmp_path: Path
) -> None:
    target = GitDeployTarget(tmp_path / "workspace", check_timeout_s=0.3)
    marker = tmp_path / "finished"
    result = await target.verify(
        repo=repo,
        environment="staging",
        commit_sha="main",
        check_command=f"echo started; sleep 1 && touch {marker}",
        deployment_id=uuid.uuid4(),
    )
    assert not result.ok
    assert result.duration_s < 1
    assert "started" in result.output
    assert "timed out after 0.3s" in result.output
    # The whole process group was killed: the sleep never finishes to leave its marker.
    await asyncio.sleep(1.2)
    assert not marker.exists()


async def test_a_relative_workspace_works_from_the_folder_it_was_given_in(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = GitDeployTarget(Path("relative-workspace"))
    monkeypatch.chdir("/")
    result = await target.verify(
        repo=repo,
        environment="staging",
        commit_sha="main",
        check_command=SAMPLE_CHECK_COMMAND,
        deployment_id=uuid.uuid4(),
    )
    assert result.ok, result.output
    assert result.log_path.startswith(str(tmp_path / "relative-workspace"))


async def test_a_failing_command_and_an_absent_command(repo: Path, target: GitDeployTarget) -> None:
    failing = await target.verify(
        repo=repo,
        environment="staging",
        commit_sha="main",
        check_command="echo broken >&2; exit 3",
        deployment_id=uuid.uuid4(),
    )
    assert not failing.ok
    assert "broken" in failing.output
    assert "exit code 3" in failing.output
    absent = await target.verify(
        repo=repo,
        environment="staging",
        commit_sha="main",
        check_command=" ",
        deployment_id=uuid.uuid4(),
    )
    assert absent.ok
    assert "no check command" in absent.output


async def test_unknown_commits_and_bad_environment_names_are_refused(
    repo: Path, target: GitDeployTarget
) -> None:
    with pytest.raises(UnknownCommit):
        await target.release(
            repo=repo, environment="staging", commit_sha="f" * 40, deployment_id=uuid.uuid4()
        )
    with pytest.raises(UnknownCommit):
        await target.verify(
            repo=repo,
            environment="staging",
            commit_sha="no-such-branch",
            check_command="true",
            deployment_id=uuid.uuid4(),
        )
    with pytest.raises(InvalidEnvironment):
        await target.release(
            repo=repo, environment="../main", commit_sha="main", deployment_id=uuid.uuid4()
        )
    assert git(repo, "for-each-ref", "--format=%(refname)") == "refs/heads/main"
    assert not target.release_log(repo).exists()


async def test_concurrent_releases_of_one_repository_are_logged_one_by_one(
    repo: Path, target: GitDeployTarget
) -> None:
    commits = [git(repo, "rev-parse", "main"), await change(repo, SAFE_PROMPT)]
    results = await asyncio.gather(
        *(
            target.release(
                repo=repo,
                environment=environment,
                commit_sha=commits[i % 2],
                deployment_id=uuid.uuid4(),
            )
            for i in range(8)
            for environment in ("staging", "production")
        )
    )
    entries = release_log(target, repo)
    assert len(entries) == 16
    for environment in ("staging", "production"):
        # Each release saw the one before it in the same environment as its previous.
        chain = [e for e in entries if e["environment"] == environment]
        for before, after in itertools.pairwise(chain):
            assert after["previous_commit_sha"] == before["commit_sha"]
        assert git(repo, "rev-parse", f"env/{environment}") == chain[-1]["commit_sha"]
    assert {r.commit_sha for r in results} == set(commits)


async def test_a_check_leaves_no_background_process_behind(
    repo: Path, target: GitDeployTarget, tmp_path: Path
) -> None:
    marker = tmp_path / "leaked"
    result = await target.verify(
        repo=repo,
        environment="staging",
        commit_sha="main",
        check_command=f"(sleep 1 && touch {marker}) > /dev/null 2>&1 & echo done",
        deployment_id=uuid.uuid4(),
    )
    assert result.ok
    await asyncio.sleep(1.2)
    assert not marker.exists()
