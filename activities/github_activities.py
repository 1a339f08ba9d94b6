"""The GitHub steps as Temporal activities: one per step of GitHubDeployTarget, each naming its
connector by id (credentials are decrypted here, never carried in a payload).

Failures leave as github_client.activity_error makes them: a refusal is a typed,
non-retryable ApplicationError (BaseMoved, MergeRefused, PullRequestClosed, GitHubRefused,
InvalidCredentials); a rate limit or an outage is retryable with GitHub's wait as
`next_retry_delay`, so a workflow's retry policy needs no special case and a lifecycle never
fails on a limit. Verification is `look_at_checks`, one look per call: the workflow calls it
again when the `github_event` signal arrives or its poll interval passes.

Registered by workers/registry.py's github() on settings.task_queue; the lifecycle and the
deployment workflows call them for a project with a `github` connector.
"""

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from temporalio import activity

from activities.connectors import Connections, ConnectorError, ConnectorService
from activities.github_client import GitHubError, GitHubUnavailable, activity_error
from activities.github_target import GitHubDeployTarget
from workflows.contracts.errors import refused
from workflows.contracts.github import (
    ChecksVerdict,
    ConnectorStep,
    DefaultHead,
    EndRequest,
    FinishDeployment,
    GitHubDeploymentRef,
    LookAtChecks,
    MergePullRequest,
    MergeResult,
    OpenPullRequest,
    PullRequestRef,
    RevertPullRequest,
    StartDeployment,
)
from workflows.contracts.ids import prompt_request_workflow_id


class GitHubActivities:
    def __init__(
        self,
        connectors: ConnectorService,
        connections: Connections,
        *,
        workflow_url: Callable[[str], str] | None = None,
    ) -> None:
        """`workflow_url`: a workflow's page in the Web UI (Settings.workflow_url), which a
        pull request's body links to, and a GitHub Deployment's statuses (their log)."""
        self._connectors = connectors
        self._connections = connections
        self._workflow_url = workflow_url

    @contextlib.asynccontextmanager
    async def _target(self, step: ConnectorStep) -> AsyncIterator[GitHubDeployTarget]:
        try:
            connector = await self._connectors.get(step.connector_id)
            async with self._connections.github(connector) as repository:
                yield GitHubDeployTarget(repository, config=connector.config)
        except ConnectorError as err:
            raise refused(err.error_type, str(err)) from None
        except (GitHubError, GitHubUnavailable) as err:
            raise activity_error(err) from None

    @activity.defn(name="github_default_head")
    async def default_head(self, step: ConnectorStep) -> DefaultHead:
        return await self.head_of(step.connector_id)

    async def head_of(self, connector_id: uuid.UUID) -> DefaultHead:
        """The default branch and its head as GitHub has it (planning asks it too)."""
        async with self._target(ConnectorStep(connector_id=connector_id)) as target:
            return await target.default_head()

    @activity.defn(name="github_open_pull_request")
    async def open_pull_request(self, step: OpenPullRequest) -> PullRequestRef:
        plan = step.plan
        if plan.lifecycle_url is None and self._workflow_url is not None:
            link = self._workflow_url(prompt_request_workflow_id(plan.request_id))
            plan = plan.model_copy(update={"lifecycle_url": link})
        async with self._target(step) as target:
            return await target.open_pull_request(plan)

    @activity.defn(name="github_merge_pull_request")
    async def merge_pull_request(self, step: MergePullRequest) -> MergeResult:
        async with self._target(step) as target:
            return await target.merge(step.number, step.head_sha)

    @activity.defn(name="github_look_at_checks")
    async def look_at_checks(self, step: LookAtChecks) -> ChecksVerdict:
        async with self._target(step) as target:
            policy = step.policy or target.policy(step.environment)
            return await target.look(step.sha, elapsed=step.elapsed, policy=policy)

    @activity.defn(name="github_start_deployment")
    async def start_deployment(self, step: StartDeployment) -> GitHubDeploymentRef:
        async with self._target(step) as target:
            return await target.start_deployment(
                step.environment,
                step.sha,
                log_url=self._log_url(step.log_url),
                environment_url=step.environment_url,
                request_id=step.request_id,
                deployment_id=step.deployment_id,
            )

    @activity.defn(name="github_finish_deployment")
    async def finish_deployment(self, step: FinishDeployment) -> None:
        async with self._target(step) as target:
            await target.finish_deployment(
                step.deployment,
                ok=step.ok,
                log_url=self._log_url(step.log_url),
                environment_url=step.environment_url,
                description=step.description,
            )

    def _log_url(self, release_log: str) -> str:
        """A GitHub Deployment status's log, which a person opens from GitHub: the Web UI page
        of the deployment workflow running this step. The release log the workflow names is a
        file on the worker (file://), which GitHub cannot open: sent only if it is a web page."""
        running = activity.info().workflow_id
        if self._workflow_url is not None and running:
            return self._workflow_url(running)
        return release_log if release_log.startswith(("https://", "http://")) else ""

    @activity.defn(name="github_revert")
    async def revert(self, step: RevertPullRequest) -> MergeResult:
        async with self._target(step) as target:
            return await target.revert(step.branch, title=step.title, body=step.body)

    @activity.defn(name="github_end_request")
    async def end_request(self, step: EndRequest) -> None:
        async with self._target(step) as target:
            await target.end_request(step.request_id, step.number)

    async def git_credentials(self, connector_id: uuid.UUID) -> dict[str, str]:
        """What git sends GitHub for the connector's repository (Repositories, for a project
        with no `git` connector): its installation token, or its personal token."""
        async with self._target(ConnectorStep(connector_id=connector_id)) as target:
            return {"token": await target.repository.git_token()}

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.default_head,
            self.open_pull_request,
            self.merge_pull_request,
            self.look_at_checks,
            self.start_deployment,
            self.finish_deployment,
            self.revert,
            self.end_request,
        ]
