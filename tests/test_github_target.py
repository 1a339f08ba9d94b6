"""A GitHub project's steps against the GitHub stand-in (scripts/github_stand_in): pull requests
with the plan, the merge's head guard, branch protection, the tenant's checks combined (the
zero-statuses trap), deployments and their statuses, rollbacks as merged reverts, tokens that
expire mid-sequence, and no token in any error."""

import asyncio
import uuid
from datetime import timedelta

import pytest

from activities.github_client import GitHubClients, GitHubError, GitHubRateLimited, activity_error
from activities.github_target import GitHubDeployTarget
from models.db import SessionFactory
from models.projects import ConnectorStatus
from scripts.github_stand_in import CheckScript, Protection
from tests.github_support import GitHubWorld, connect_github
from workflows.contracts.errors import ErrorType
from workflows.contracts.github import (
    PullRequestPlan,
    SilencePolicy,
    VerdictReason,
    VerificationPolicy,
    request_branch,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUICK = VerificationPolicy(time_limit=timedelta(seconds=20), grace=timedelta(seconds=1))


def plan(request_id: uuid.UUID, revision: int = 1) -> PullRequestPlan:
    return PullRequestPlan(
        request_id=request_id,
        title="Summer sale banner",
        summary="Adds a sale banner to the home page.",
        risk_level="low",
        risk_reasons=["one page, no checkout code"],
        estimate_tokens=1200,
        approvals=["ops@acme.test"],
        lifecycle_url=f"https://changeflow.example/requests/{request_id}",
        revision=revision,
    )


async def test_a_request_becomes_a_pull_request_verified_merged_and_deployed(
    github_world: GitHubWorld,
) -> None:
    world = github_world
    state = world.hub.state
    state.add_check_script(world.repository, CheckScript("build", outcome="success"))
    request_id = uuid.uuid4()
    target = world.target(poll_first=timedelta(seconds=0.05))
    async with target.repository:
        head = await target.default_head()
        assert head.branch == "main" and head.sha == world.repository.bare.resolve(
            "refs/heads/main"
        )
        sha = world.push_branch(request_branch(request_id), {"index.html": "<h1>Sale</h1>\n"})
        pull = await target.open_pull_request(plan(request_id))
        assert (pull.number, pull.head_sha, pull.branch) == (1, sha, request_branch(request_id))
        body = state.pulls[("acme/storefront", 1)].body or ""
        for part in ("Adds a sale banner", "Risk: low", "one page", "1200 tokens", "ops@acme.test"):
            assert part in body
        assert f"https://changeflow.example/requests/{request_id}" in body

        # A new revision: the branch is pushed again and the same pull request follows.
        sha = world.push_branch(request_branch(request_id), {"index.html": "<h1>Sale!</h1>\n"})
        again = await target.open_pull_request(plan(request_id, revision=2))
        assert (again.number, again.head_sha) == (1, sha)
        assert "revision 2" in (state.pulls[("acme/storefront", 1)].body or "")

        staging = await target.start_deployment(
            "staging", sha, log_url="https://changeflow.example/log", request_id=request_id
        )
        verdict = await target.verify(sha, QUICK)
        assert verdict.ok and verdict.reason is VerdictReason.PASSED
        assert [c.name for c in verdict.checks] == ["build"]
        await target.finish_deployment(
            staging,
            ok=True,
            log_url="https://changeflow.example/log",
            environment_url="https://staging.acme.test",
        )
        merged = await target.merge(1, sha)
        assert world.repository.bare.resolve("refs/heads/main") == merged.merge_sha
        row = uuid.uuid4()  # changeflow's deployment: a retried start finds the first one
        production = await target.start_deployment(
            "production",
            merged.merge_sha,
            log_url="https://changeflow.example/log",
            deployment_id=row,
        )
        again = await target.start_deployment(
            "production",
            merged.merge_sha,
            log_url="https://changeflow.example/log",
            deployment_id=row,
        )
        assert again == production
        await target.finish_deployment(
            production, ok=True, log_url="https://changeflow.example/log"
        )
        await target.end_request(request_id, 1)

    deployment = state.deployment(world.repository, staging.id)
    assert (deployment.environment, deployment.sha) == ("staging", sha)
    assert [s.state for s in deployment.statuses] == ["in_progress", "success"]
    assert deployment.statuses[-1].log_url == "https://changeflow.example/log"
    assert deployment.statuses[-1].environment_url == "https://staging.acme.test"
    prod = state.deployment(world.repository, production.id)
    assert len([d for d in state.deployments.values() if d.environment == "production"]) == 1
    assert (prod.environment, prod.sha) == ("production", merged.merge_sha)
    assert f"refs/heads/{request_branch(request_id)}" not in world.repository.bare.refs()
    assert world.repository.bare.git("show", "main:index.html") == "<h1>Sale!</h1>"


async def test_check_runs_green_with_zero_statuses_pass_without_waiting(
    github_world: GitHubWorld,
) -> None:
    world = github_world
    world.hub.state.add_check_script(world.repository, CheckScript("ci", kind="check_run"))
    sha = world.push_branch("changeflow/zero", {"a.txt": "a\n"})
    target = world.target()
    async with target.repository:
        combined = await target.repository.call(
            "GET combined",
            lambda gh: gh.rest.repos.async_get_combined_status_for_ref("acme", "storefront", sha),
        )
        # The trap: GitHub's combined status says pending with no statuses at all.
        assert (combined.parsed_data.state, combined.parsed_data.total_count) == ("pending", 0)
        verdict = await target.look(sha, elapsed=timedelta(0), policy=QUICK)
    assert verdict.ok and verdict.reason is VerdictReason.PASSED
    assert [(c.name, c.kind.value) for c in verdict.checks] == [("ci", "check_run")]


async def test_a_failing_check_names_itself_and_links_its_details(
    github_world: GitHubWorld,
) -> None:
    world = github_world
    state = world.hub.state
    state.add_check_script(world.repository, CheckScript("build", outcome="success"))
    state.add_check_script(
        world.repository,
        CheckScript(
            "lint", kind="status", outcome="failure", details_url="https://ci.example/lint/7"
        ),
    )
    sha = world.push_branch("changeflow/red", {"a.txt": "a\n"})
    target = world.target(poll_first=timedelta(seconds=0.05))
    async with target.repository:
        verdict = await target.verify(sha, QUICK)
    assert not verdict.ok and verdict.reason is VerdictReason.FAILED
    assert "lint: failure (https://ci.example/lint/7)" in verdict.summary()
    assert "build" not in verdict.summary()


async def test_a_check_that_never_reports_ends_at_the_time_limit(
    github_world: GitHubWorld,
) -> None:
    world = github_world
    world.hub.state.add_check_script(world.repository, CheckScript("e2e", outcome=None))
    sha = world.push_branch("changeflow/slow", {"a.txt": "a\n"})
    policy = VerificationPolicy(time_limit=timedelta(seconds=0.5), grace=timedelta(seconds=0.1))
    target = world.target(poll_first=timedelta(seconds=0.05))
    async with target.repository:
        verdict = await target.verify(sha, policy)
    assert not verdict.ok and verdict.reason is VerdictReason.TIMED_OUT
    assert "time limit reached waiting for: e2e" in verdict.summary()


async def test_nothing_reporting_is_decided_by_the_silence_policy(
    github_world: GitHubWorld,
) -> None:
    world = github_world
    sha = world.push_branch("changeflow/silent", {"a.txt": "a\n"})
    target = world.target()
    async with target.repository:
        waiting = await target.look(sha, elapsed=timedelta(0), policy=QUICK)
        passes = await target.look(sha, elapsed=timedelta(seconds=2), policy=QUICK)
        fails = await target.look(
            sha,
            elapsed=timedelta(seconds=2),
            policy=QUICK.model_copy(update={"on_silence": SilencePolicy.FAIL}),
        )
    assert waiting.reason is VerdictReason.WAITING
    assert (passes.reason, passes.ok) == (VerdictReason.NOTHING_REPORTED, True)
    assert (fails.reason, fails.ok) == (VerdictReason.NOTHING_REPORTED, False)


async def test_branch_protection_refusing_the_merge_is_a_typed_readable_refusal(
    github_world: GitHubWorld,
) -> None:
    world = github_world
    state = world.hub.state
    state.protect(world.repository, "main", Protection(required_approvals=1))
    request_id = uuid.uuid4()
    sha = world.push_branch(request_branch(request_id), {"a.txt": "a\n"})
    target = world.target()
    async with target.repository:
        pull = await target.open_pull_request(plan(request_id))
        with pytest.raises(GitHubError) as refused:
            await target.merge(pull.number, sha)
    assert refused.value.error_type is ErrorType.MERGE_REFUSED
    assert "At least 1 approving review is required" in str(refused.value)
    assert pull.url in str(refused.value)
    error = activity_error(refused.value)
    assert (error.type, error.non_retryable) == ("MergeRefused", True)
    assert state.pulls[("acme/storefront", pull.number)].state == "open"


async def test_a_head_moved_since_verification_is_base_moved(github_world: GitHubWorld) -> None:
    world = github_world
    request_id = uuid.uuid4()
    verified = world.push_branch(request_branch(request_id), {"a.txt": "a\n"})
    target = world.target()
    async with target.repository:
        pull = await target.open_pull_request(plan(request_id))
        world.push_branch(request_branch(request_id), {"a.txt": "b\n"})  # someone pushed
        with pytest.raises(GitHubError) as moved:
            await target.merge(pull.number, verified)
    assert moved.value.error_type is ErrorType.BASE_MOVED
    assert activity_error(moved.value).type == ErrorType.BASE_MOVED.value
    assert world.repository.bare.resolve("refs/heads/main") != verified


async def test_a_pull_request_closed_by_a_person_is_a_readable_outcome(
    github_world: GitHubWorld,
) -> None:
    world = github_world
    request_id = uuid.uuid4()
    sha = world.push_branch(request_branch(request_id), {"a.txt": "a\n"})
    target = world.target()
    async with target.repository:
        pull = await target.open_pull_request(plan(request_id))
        world.hub.state.close_pull_as_person(
            world.hub.state.pulls[("acme/storefront", pull.number)]
        )
        with pytest.raises(GitHubError) as closed:
            await target.merge(pull.number, sha)
    assert closed.value.error_type is ErrorType.PULL_REQUEST_CLOSED


async def test_a_rollback_is_a_revert_pull_request_merged(github_world: GitHubWorld) -> None:
    world = github_world
    request_id = uuid.uuid4()
    sha = world.push_branch(request_branch(request_id), {"index.html": "<h1>Broken</h1>\n"})
    target = world.target()
    async with target.repository:
        pull = await target.open_pull_request(plan(request_id))
        merged = await target.merge(pull.number, sha)
        world.push_revert("changeflow/revert-1", merged.merge_sha)
        reverted = await target.revert(
            "changeflow/revert-1", title="Roll back the sale banner", body="Production failed."
        )
    bare = world.repository.bare
    assert bare.resolve("refs/heads/main") == reverted.merge_sha
    assert bare.git("show", "main:index.html") == "<h1>Storefront</h1>"


async def test_an_installation_token_expiring_mid_sequence_is_bought_again(
    github_world: GitHubWorld,
) -> None:
    world = github_world
    request_id = uuid.uuid4()
    sha = world.push_branch(request_branch(request_id), {"a.txt": "a\n"})
    target = world.target()
    async with target.repository:
        pull = await target.open_pull_request(plan(request_id))
        assert world.clients.tokens.purchases == 1
        world.hub.state.expire_tokens()  # GitHub revokes every token now
        merged = await target.merge(pull.number, sha)
        world.hub.clock.advance(3601)  # an hour later, by GitHub's clock
        await target.end_request(request_id, pull.number)
    assert world.clients.tokens.purchases == 3
    assert world.repository.bare.resolve("refs/heads/main") == merged.merge_sha
    refused = [r for r in world.hub.requests if r[2] == 401 and r[1].startswith("/repos/")]
    assert len(refused) == 2  # one refused call each time, then the same call succeeded


async def test_a_secondary_rate_limit_becomes_a_retry_after_githubs_wait(
    github_world: GitHubWorld,
) -> None:
    world = github_world
    world.hub.state.limits.arm_secondary_limit("POST", "/pulls", retry_after=30, status=403)
    request_id = uuid.uuid4()
    world.push_branch(request_branch(request_id), {"a.txt": "a\n"})
    target = world.target()
    async with target.repository:
        with pytest.raises(GitHubRateLimited) as limited:
            await target.open_pull_request(plan(request_id))
        error = activity_error(limited.value)
        assert (error.type, error.non_retryable) == ("GitHubRateLimited", False)
        assert error.next_retry_delay == timedelta(seconds=30)
        pull = await target.open_pull_request(plan(request_id))  # the retry
    assert pull.number == 1 and len(world.hub.state.pulls) == 1


async def test_bad_credentials_leave_the_connector_in_error_without_the_key_or_token(
    sessions: SessionFactory, github_world: GitHubWorld
) -> None:
    world = github_world
    good = await connect_github(sessions, world)
    assert good.connector.status is ConnectorStatus.ACTIVE
    assert good.connector.config["default_branch"] == "main"

    token = world.hub.state.create_personal_token("mallory", ["acme/other"]).value
    wrong = await connect_github(sessions, world, credentials={"token": token})
    assert wrong.connector.status is ConnectorStatus.ERROR
    assert "404" in (wrong.connector.last_error or "")
    assert token not in (wrong.connector.last_error or "")

    other_key = world.hub.create_app(slug="other").private_key_pem
    forged = await connect_github(
        sessions, world, credentials={**world.app_credentials(), "private_key": other_key}
    )
    assert forged.connector.status is ConnectorStatus.ERROR
    assert "the App's JWT were refused" in (forged.connector.last_error or "")
    assert "PRIVATE KEY" not in (forged.connector.last_error or "")


async def test_a_primary_rate_limit_waits_for_its_reset(github_world: GitHubWorld) -> None:
    world = github_world
    target = world.target()
    async with target.repository:
        await target.default_head()  # buys the token the limit is counted against
        [token] = [t for t in world.hub.state.tokens.values() if t.kind == "installation"]
        world.hub.state.limits.exhaust_primary_limit(token)
        with pytest.raises(GitHubRateLimited) as limited:
            await target.default_head()
    error = activity_error(limited.value)
    assert (error.type, error.non_retryable) == ("GitHubRateLimited", False)
    # x-ratelimit-reset is an hour away on GitHub's clock: Temporal waits about that long.
    assert error.next_retry_delay is not None
    assert timedelta(minutes=50) < error.next_retry_delay <= timedelta(hours=1)
    assert "primary rate limit" in str(limited.value)


async def test_no_error_and_no_repr_holds_a_token_or_a_key(github_world: GitHubWorld) -> None:
    world = github_world
    revoked = world.hub.state.create_personal_token("bob", ["acme/storefront"]).value
    world.hub.state.tokens.pop(revoked)  # GitHub no longer knows it: 401 Bad credentials
    access = world.access
    refused_token = world.clients.repository(
        type(access)(api_url=access.api_url, owner="acme", repo="storefront", token=revoked)
    )
    with pytest.raises(GitHubError) as bad:
        async with refused_token:
            await GitHubDeployTarget(refused_token).default_head()
    assert bad.value.error_type is ErrorType.INVALID_CREDENTIALS
    assert "Bad credentials" in str(bad.value)
    for text in (str(bad.value), repr(refused_token.access), repr(world.access)):
        assert revoked not in text and "PRIVATE KEY" not in text
        assert world.token() not in text


async def test_three_requests_in_a_row_merge_in_order_and_main_holds_all_three(
    github_world: GitHubWorld,
) -> None:
    world = github_world
    world.hub.state.add_check_script(world.repository, CheckScript("build", outcome="success"))
    target = world.target(poll_first=timedelta(seconds=0.05), config={
        "verification": {"staging": {"time_limit_s": 20, "grace_s": 1}}
    })  # fmt: skip
    merged = []
    async with target.repository:
        for n in range(3):
            request_id = uuid.uuid4()
            sha = world.push_branch(request_branch(request_id), {f"pages/p{n}.html": f"{n}\n"})
            pull = await target.open_pull_request(plan(request_id))
            verdict = await target.verify(sha, target.policy("staging"))
            assert verdict.ok, verdict.summary()
            merged.append((await target.merge(pull.number, sha)).merge_sha)
            await target.end_request(request_id, pull.number)
    bare = world.repository.bare
    assert bare.resolve("refs/heads/main") == merged[-1]
    assert [bare.git("show", f"main:pages/p{n}.html") for n in range(3)] == ["0", "1", "2"]
    assert [p.number for p in world.hub.state.pulls.values() if p.merged] == [1, 2, 3]
    assert not [r for r in bare.refs() if r.startswith("refs/heads/changeflow/")]


async def test_content_creation_takes_turns_per_installation_across_processes(
    sessions: SessionFactory,
) -> None:
    # Two worker processes' clients, one database: while one writes, the other waits.
    first, second = GitHubClients(), GitHubClients()
    for clients in (first, second):
        clients.writes.across_processes(sessions)
    key = "https://api.github.com|installation:42"
    async with first.writes.turn(key):
        waiting = asyncio.create_task(_enter(second, key))
        done, _ = await asyncio.wait({waiting}, timeout=1.0)
        assert not done  # still waiting for the first one's turn
        async with second.writes.turn("https://api.github.com|installation:43"):
            pass  # another installation does not wait
    assert await waiting == "entered"


async def _enter(clients: GitHubClients, key: str) -> str:
    async with clients.writes.turn(key):
        return "entered"
