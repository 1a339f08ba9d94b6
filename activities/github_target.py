"""A GitHub project's deploy target: a request is a pull request, the tenant's own checks verify
it, environments are GitHub Deployments, production is the merge.

`GitHubDeployTarget` is the adapter the lifecycle calls for a project whose connector is a
`github` connector (it does not move git refs itself except to delete a request's branch: the
git layer pushes `changeflow/<request id>` with a lease, then calls this). The sequence, one
method per step, each safe to repeat (a retried activity finds what its first attempt did):

    head = await target.default_head()                   # plan from GitHub's default branch
    # ... the git layer pushes changeflow/<request id> (the change on top of `head.sha`)
    pull = await target.open_pull_request(plan)          # or updates the open one (new revision)
    staging = await target.start_deployment("staging", pull.head_sha, log_url=..., ...)
    verdict = await target.verify(pull.head_sha, policy) # polls; or `look` once per signal
    await target.finish_deployment(staging, ok=verdict.ok, log_url=..., description=...)
    merged = await target.merge(pull.number, pull.head_sha)  # the head-commit guard
    production = await target.start_deployment("production", merged.merge_sha, ...)
    verdict = await target.verify(merged.merge_sha, policy)
    await target.finish_deployment(production, ok=verdict.ok, ...)
    await target.end_request(request_id, pull.number)    # closes it if open, deletes the branch

    # rollback: the git layer pushes a branch holding the revert commit, then
    merged = await target.revert(branch, title=..., body=...)  # a pull request, merged
    # ... and verified as a release is: start_deployment, verify, finish_deployment of
    # merged.merge_sha (of the restored commit when main held its tree, or in staging)

Outcomes the lifecycle handles (GitHubError.error_type, ApplicationError types via
github_client.activity_error):
- `merge`: the head moved since it was verified (GitHub's 409) -> ErrorType.BASE_MOVED, the
  existing rebase path (update the branch, verify again); branch protection or a conflict
  refusing it (405) -> ErrorType.MERGE_REFUSED with GitHub's reason ("At least 1 approving
  review is required ..."); a pull request closed by a person -> PULL_REQUEST_CLOSED.
- any call: GitHub's rate limits and outages are GitHubUnavailable/GitHubRateLimited, retried
  by Temporal after GitHub's wait, never a failed lifecycle.
- `verify`/`look` never raise on red checks: the ChecksVerdict says FAILED, TIMED_OUT or
  NOTHING_REPORTED (by the project's SilencePolicy), names each check and links its details.

How the lifecycle uses it: a project is a GitHub project when it has a `github` connector
scoped to it (Connector.project_id; activities.lifecycle.github_connector_of). Planning asks
`default_head` (LifecycleActivities, through GitHubActivities.head_of); the workflows call the
other steps as the activities of activities/github_activities.py: the lifecycle
(workflows/lifecycle.py) `github_open_pull_request` after each apply and `github_end_request`
when the request ends; the deployment (workflows/deployment.py) `github_start_deployment`,
`github_look_at_checks` until decided (woken by the `github_event` signal the lifecycle
forwards, else polled from POLL_FIRST doubling to POLL_MAX), `github_finish_deployment`,
`github_merge_pull_request` in production and `github_revert` for a rollback of production.
The environment's policy is the connector's `verification` config (github_checks.policy_for).
"""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from githubkit_schemas.latest.models import CheckRun, PullRequest, PullRequestSimple, Status
from pydantic import BaseModel

from activities.github_checks import check_run, commit_status, decide, policy_for
from activities.github_client import GitHubError, GitHubRepository, GitHubUnavailable
from workflows.contracts.errors import ErrorType
from workflows.contracts.github import (
    Check,
    ChecksVerdict,
    DefaultHead,
    GitHubDeploymentRef,
    MergeResult,
    PullRequestPlan,
    PullRequestRef,
    VerificationPolicy,
    request_branch,
)

PAGE_SIZE = 100
MAX_PAGES = 10  # 1,000 checks of one commit is more than any CI reports
# Polling when no webhook wakes verification: from 2 s, doubling to 30 s apart.
POLL_FIRST = timedelta(seconds=2)
POLL_MAX = timedelta(seconds=30)
# GitHub's 405 when the base moved during the merge itself: try again, nothing is refused.
BASE_RACE = "Base branch was modified"
DEPLOYMENT_TASK = "deploy"
DeploymentState = Literal["in_progress", "success", "failure", "error", "inactive"]


def pull_request_body(plan: PullRequestPlan) -> str:
    """The pull request's description: what the plan says, in Markdown."""
    lines = [f"**Changeflow request** `{plan.request_id}` (revision {plan.revision})", ""]
    if plan.summary:
        lines += ["### Summary", plan.summary, ""]
    if plan.risk_level or plan.risk_reasons:
        lines += [f"### Risk: {plan.risk_level or 'unrated'}"]
        lines += [f"- {reason}" for reason in plan.risk_reasons] + [""]
    if plan.estimate_tokens is not None:
        lines += ["### Estimate", f"{plan.estimate_tokens} tokens", ""]
    lines += ["### Approvals"]
    lines += [f"- {who}" for who in plan.approvals] or ["- none yet"]
    lines += [""]
    if plan.lifecycle_url:
        lines += [f"[Follow the request in changeflow]({plan.lifecycle_url})", ""]
    lines += ["<sub>Opened by changeflow; merged by changeflow once its checks pass.</sub>"]
    return "\n".join(lines)


def _pull_ref(pull: PullRequest | PullRequestSimple) -> PullRequestRef:
    return PullRequestRef(
        number=pull.number,
        url=pull.html_url,
        branch=pull.head.ref,
        head_sha=pull.head.sha,
        state=pull.state,
        merged=bool(getattr(pull, "merged", False) or pull.merged_at),
    )


def _payload(raw: object) -> dict[str, Any]:
    """A deployment's payload as GitHub answers it: an object (githubkit's model) or a string
    of JSON."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    return raw if isinstance(raw, dict) else {}


class GitHubDeployTarget:
    """One GitHub repository as a request's pull requests, checks and deployments."""

    def __init__(
        self,
        repository: GitHubRepository,
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_first: timedelta = POLL_FIRST,
        poll_max: timedelta = POLL_MAX,
        heartbeat: Callable[[str], None] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.repository = repository
        self._config = config or {}
        self._clock = clock
        self._poll_first = poll_first.total_seconds()
        self._poll_max = poll_max.total_seconds()
        self._heartbeat = heartbeat

    @property
    def _o(self) -> tuple[str, str]:
        return self.repository.owner, self.repository.name

    @property
    def _path(self) -> str:
        return f"/repos/{self.repository.owner}/{self.repository.name}"

    # --- planning -------------------------------------------------------------------------

    async def default_head(self) -> DefaultHead:
        """The default branch and its head as GitHub has it now."""
        about = await self.repository.call(
            f"GET {self._path}", lambda gh: gh.rest.repos.async_get(*self._o)
        )
        branch = about.parsed_data.default_branch
        ref = await self.repository.call(
            f"GET {self._path}/git/ref/heads/{branch}",
            lambda gh: gh.rest.git.async_get_ref(*self._o, f"heads/{branch}"),
        )
        return DefaultHead(branch=branch, sha=ref.parsed_data.object_.sha)

    # --- the pull request -----------------------------------------------------------------

    async def find_pull_request(self, branch: str, *, state: str = "open") -> PullRequestRef | None:
        found = await self.repository.call(
            f"GET {self._path}/pulls",
            lambda gh: gh.rest.pulls.async_list(
                *self._o,
                head=f"{self.repository.owner}:{branch}",
                state=state,  # type: ignore[arg-type]
            ),
        )
        pulls: list[PullRequestSimple] = list(found.parsed_data)
        return _pull_ref(pulls[0]) if pulls else None

    async def open_pull_request(
        self, plan: PullRequestPlan, *, base: str | None = None
    ) -> PullRequestRef:
        """The request's pull request from `changeflow/<request id>` (pushed already) into the
        default branch, its body the plan. An open one (a retry, or a new revision) is updated
        instead, so this may be called again without a second pull request."""
        branch = request_branch(plan.request_id)
        existing = await self.find_pull_request(branch)
        if existing is not None:
            return await self.update_pull_request(existing.number, plan)
        base = base or (await self.default_head()).branch
        created = await self.repository.call(
            f"POST {self._path}/pulls",
            lambda gh: gh.rest.pulls.async_create(
                *self._o, title=plan.title, head=branch, base=base, body=pull_request_body(plan)
            ),
            writes=True,
        )
        return _pull_ref(created.parsed_data)

    async def update_pull_request(self, number: int, plan: PullRequestPlan) -> PullRequestRef:
        """A new revision: the git layer has pushed the branch; title and body follow."""
        updated = await self.repository.call(
            f"PATCH {self._path}/pulls/{number}",
            lambda gh: gh.rest.pulls.async_update(
                *self._o, number, title=plan.title, body=pull_request_body(plan)
            ),
            writes=True,
        )
        return _pull_ref(updated.parsed_data)

    async def pull_request(self, number: int) -> PullRequestRef:
        got = await self.repository.call(
            f"GET {self._path}/pulls/{number}",
            lambda gh: gh.rest.pulls.async_get(*self._o, number),
        )
        return _pull_ref(got.parsed_data)

    async def merge(self, number: int, head_sha: str) -> MergeResult:
        """Merge only if the head is still `head_sha`, the commit that was verified."""
        what = f"PUT {self._path}/pulls/{number}/merge"
        try:
            merged = await self.repository.call(
                what,
                lambda gh: gh.rest.pulls.async_merge(
                    *self._o, number, sha=head_sha, merge_method="merge"
                ),
                writes=True,
            )
        except GitHubError as err:
            raise await self._merge_refusal(number, head_sha, err) from None
        return MergeResult(number=number, merge_sha=merged.parsed_data.sha)

    async def _merge_refusal(
        self, number: int, head_sha: str, err: GitHubError
    ) -> GitHubError | GitHubUnavailable:
        if err.status == 409:
            return GitHubError(
                f"pull request #{number}'s head moved since {head_sha[:12]} was verified; "
                f"the change must be updated and verified again ({err})",
                error_type=ErrorType.BASE_MOVED,
                status=409,
            )
        if err.status != 405:
            return err
        if BASE_RACE in str(err):
            return GitHubUnavailable(f"{err}; merging again")
        pull = await self.pull_request(number)
        if pull.state != "open":
            return GitHubError(
                f"pull request #{number} was closed on GitHub outside changeflow ({pull.url})",
                error_type=ErrorType.PULL_REQUEST_CLOSED,
                status=405,
            )
        return GitHubError(
            f"GitHub refused to merge pull request #{number} ({pull.url}): "
            f"{str(err).split(': ', 2)[-1]}",
            error_type=ErrorType.MERGE_REFUSED,
            status=405,
        )

    async def revert(
        self, branch: str, *, title: str, body: str, base: str | None = None
    ) -> MergeResult:
        """A rollback as GitHub sees it: `branch` (pushed by the git layer, holding the revert
        commit) opened as a pull request and merged with its head as the guard."""
        pull = await self.find_pull_request(branch)
        if pull is None:
            base = base or (await self.default_head()).branch
            created = await self.repository.call(
                f"POST {self._path}/pulls",
                lambda gh: gh.rest.pulls.async_create(
                    *self._o, title=title, head=branch, base=base, body=body
                ),
                writes=True,
            )
            pull = _pull_ref(created.parsed_data)
        return await self.merge(pull.number, pull.head_sha)

    async def end_request(self, request_id: uuid.UUID, number: int | None = None) -> None:
        """When a request ends: its pull request closed if still open, its branch deleted.
        Whatever is gone already stays gone (safe to repeat)."""
        if number is not None and (await self.pull_request(number)).state == "open":
            await self.repository.call(
                f"PATCH {self._path}/pulls/{number}",
                lambda gh: gh.rest.pulls.async_update(*self._o, number, state="closed"),
                writes=True,
            )
        branch = request_branch(request_id)
        try:
            await self.repository.call(
                f"DELETE {self._path}/git/refs/heads/{branch}",
                lambda gh: gh.rest.git.async_delete_ref(*self._o, f"heads/{branch}"),
                writes=True,
            )
        except GitHubError as err:
            if err.status not in (404, 422):  # 422 "Reference does not exist"
                raise

    # --- verification ---------------------------------------------------------------------

    async def read_checks(self, sha: str) -> list[Check]:
        """Every check run (latest per name) and commit status of `sha`, never the combined
        status (pending with zero statuses on a repository that only has check runs)."""
        checks: list[Check] = []
        for page in range(1, MAX_PAGES + 1):
            runs = await self.repository.call(
                f"GET {self._path}/commits/{sha}/check-runs",
                lambda gh, page=page: gh.rest.checks.async_list_for_ref(  # type: ignore[misc]
                    *self._o, sha, filter_="latest", per_page=PAGE_SIZE, page=page
                ),
            )
            batch: list[CheckRun] = runs.parsed_data.check_runs
            checks += [
                check_run(r.name, r.status, r.conclusion, r.details_url or r.html_url)
                for r in batch
            ]
            if len(batch) < PAGE_SIZE:
                break
        for page in range(1, MAX_PAGES + 1):
            statuses = await self.repository.call(
                f"GET {self._path}/commits/{sha}/statuses",
                lambda gh, page=page: gh.rest.repos.async_list_commit_statuses_for_ref(  # type: ignore[misc]
                    *self._o, sha, per_page=PAGE_SIZE, page=page
                ),
            )
            listed: list[Status] = statuses.parsed_data
            checks += [commit_status(s.context, s.state, s.target_url) for s in listed]
            if len(listed) < PAGE_SIZE:
                break
        return checks

    def policy(self, environment: str) -> VerificationPolicy:
        """The environment's verification policy, from the connector's `verification` config."""
        return policy_for(self._config, environment)

    async def look(
        self, sha: str, *, elapsed: timedelta, policy: VerificationPolicy
    ) -> ChecksVerdict:
        """One look: the verdict `elapsed` after verification began (WAITING: look again)."""
        return decide(sha, await self.read_checks(sha), elapsed=elapsed, policy=policy)

    async def verify(
        self, sha: str, policy: VerificationPolicy, *, wake: asyncio.Event | None = None
    ) -> ChecksVerdict:
        """Look until decided: polled from POLL_FIRST doubling to POLL_MAX, at once when `wake`
        is set (a webhook arrived), and decided at the policy's time limit at the latest."""
        started = self._clock()
        delay = self._poll_first
        while True:
            if wake is not None:
                wake.clear()  # before the look: a report arriving during it wakes the next
            verdict = await self.look(
                sha, elapsed=timedelta(seconds=self._clock() - started), policy=policy
            )
            if verdict.done:
                return verdict
            if self._heartbeat is not None:
                self._heartbeat(verdict.summary())
            left = policy.time_limit.total_seconds() - (self._clock() - started)
            pause = max(0.0, min(delay, left))
            if wake is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=pause)
            else:
                await asyncio.sleep(pause)
            delay = min(delay * 2, self._poll_max)

    # --- deployments ----------------------------------------------------------------------

    async def start_deployment(
        self,
        environment: str,
        sha: str,
        *,
        log_url: str,
        environment_url: str = "",
        request_id: uuid.UUID | None = None,
        deployment_id: uuid.UUID | None = None,
        description: str = "",
    ) -> GitHubDeploymentRef:
        """A GitHub Deployment of `sha` to `environment`, marked in_progress. changeflow verifies
        the checks itself, so none are required by GitHub (`required_contexts=[]`), and GitHub
        must not merge anything into the ref (`auto_merge=False`). With `deployment_id`
        (changeflow's own), a repeated call finds the deployment its first call created."""
        payload: dict[str, Any] = {
            "changeflow_request_id": str(request_id) if request_id else None,
            "changeflow_deployment_id": str(deployment_id) if deployment_id else None,
        }
        if deployment_id is not None:
            found = await self._deployment_of(environment, sha, str(deployment_id))
            if found is not None:
                return found
        created = await self.repository.call(
            f"POST {self._path}/deployments",
            lambda gh: gh.rest.repos.async_create_deployment(
                *self._o,
                ref=sha,
                task=DEPLOYMENT_TASK,
                environment=environment,
                required_contexts=[],
                auto_merge=False,
                payload=payload,
                description=description or f"changeflow: {sha[:12]} to {environment}",
                production_environment=environment == "production",
                transient_environment=False,
            ),
            writes=True,
        )
        deployment = created.parsed_data
        if not hasattr(deployment, "id"):  # 202: GitHub merged the default branch in (auto_merge)
            raise GitHubError(f"GitHub did not create a deployment of {sha[:12]}: {deployment}")
        ref = GitHubDeploymentRef(id=deployment.id, environment=environment, sha=sha)
        await self.deployment_status(
            ref, "in_progress", log_url=log_url, environment_url=environment_url
        )
        return ref

    async def _deployment_of(
        self, environment: str, sha: str, deployment_id: str
    ) -> GitHubDeploymentRef | None:
        listed = await self.repository.call(
            f"GET {self._path}/deployments",
            lambda gh: gh.rest.repos.async_list_deployments(
                *self._o, sha=sha, environment=environment, per_page=PAGE_SIZE
            ),
        )
        for deployment in listed.parsed_data:
            if _payload(deployment.payload).get("changeflow_deployment_id") == deployment_id:
                return GitHubDeploymentRef(id=deployment.id, environment=environment, sha=sha)
        return None

    async def finish_deployment(
        self,
        deployment: GitHubDeploymentRef,
        *,
        ok: bool,
        log_url: str,
        environment_url: str = "",
        description: str = "",
    ) -> None:
        await self.deployment_status(
            deployment,
            "success" if ok else "failure",
            log_url=log_url,
            environment_url=environment_url,
            description=description,
        )

    async def deployment_status(
        self,
        deployment: GitHubDeploymentRef,
        state: DeploymentState,
        *,
        log_url: str,
        environment_url: str = "",
        description: str = "",
    ) -> None:
        # GitHub caps a deployment status's description at 140 characters.
        text = (description or f"changeflow: {state}")[:140]
        await self.repository.call(
            f"POST {self._path}/deployments/{deployment.id}/statuses",
            lambda gh: gh.rest.repos.async_create_deployment_status(
                *self._o,
                deployment.id,
                state=state,
                log_url=log_url,
                environment_url=environment_url,
                description=text,
            ),
            writes=True,
        )
