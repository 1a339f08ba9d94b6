"""Rollback planning: what an operator's rollback restores, and the last good release an
automatic rollback or a compensation falls back to. Reads only; writes nothing."""

import contextlib
from collections.abc import Callable
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from activities import deployments
from activities.change_engine import RepositoryError
from activities.deployments import not_found
from activities.git_store import last_without, resolve_commit
from activities.lifecycle import github_connector_of
from activities.release_refs import read_release_facts
from activities.remote_repository import Repositories, default_repositories
from models import Deployment, DeploymentPlan, DeploymentStatus, Project
from models.db import SessionFactory
from models.release_retention import DEFAULT_RELEASE_RETENTION, retention
from workflows.contracts.deployment import (
    FindLastGoodRelease,
    LastGoodRelease,
    PlanRollback,
    RollbackPlan,
)
from workflows.contracts.errors import ErrorType, refused


async def _default_branch_head(
    project: Project, repositories: Repositories, *, without: Deployment | None = None
) -> str | None:
    """The default branch's head; with `without`, as it was before that deployment's change
    was merged into it (a GitHub production merges before it verifies: a first release that
    fails must not fall back to the merge it is undoing)."""
    if not project.repo_url:
        return None
    with contextlib.suppress(RepositoryError, OSError):
        repo = await repositories.local(project)
        head = await resolve_commit(repo, project.default_branch)
        if head and without is not None and without.commit_sha:
            return await last_without(repo, head, without.commit_sha)
        return head
    return None


async def last_good_release(
    sessions: SessionFactory, request: FindLastGoodRelease, repositories: Repositories
) -> LastGoodRelease:
    """The release to restore: the last SUCCEEDED deployment of the project and environment;
    before any, what the environment branch held, else the project's default branch."""
    async with sessions() as session:
        query = (
            select(Deployment)
            .where(
                Deployment.project_id == request.project_id,
                Deployment.environment == request.environment,
                Deployment.status == DeploymentStatus.SUCCEEDED,
                col(Deployment.commit_sha).is_not(None),
            )
            .order_by(col(Deployment.finished_at).desc())
            .limit(1)
        )
        if request.exclude_deployment_id:
            query = query.where(Deployment.id != request.exclude_deployment_id)
        good = (await session.exec(query)).first()
        if good is not None and good.commit_sha:
            return LastGoodRelease(
                commit_sha=good.commit_sha, deployment_id=good.id, source="last succeeded"
            )
        failed = None
        if request.exclude_deployment_id:
            failed = await session.get(Deployment, request.exclude_deployment_id)
            if failed is not None and failed.previous_commit_sha:
                return LastGoodRelease(
                    commit_sha=failed.previous_commit_sha,
                    deployment_id=None,
                    source="environment branch before the failed release",
                )
        project = await session.get(Project, request.project_id)
    if project is not None:
        head = await _default_branch_head(project, repositories, without=failed)
        if head:
            return LastGoodRelease(
                commit_sha=head,
                deployment_id=None,
                source=f"default branch {project.default_branch}",
            )
    raise refused(
        ErrorType.NO_RELEASE_TO_RESTORE,
        f"no earlier release of project {request.project_id} in "
        f"{request.environment.value} to restore",
    )


class RollbackActivities:
    def __init__(
        self,
        sessions: SessionFactory,
        repositories: Repositories | None = None,
        release_retention: int = DEFAULT_RELEASE_RETENTION,
    ) -> None:
        """`release_retention`: as the release activities prune by (Settings.release_retention):
        a target beyond it is refused as too old."""
        self._sessions = sessions
        self._repositories = repositories or default_repositories(sessions)
        self._release_retention = release_retention

    def lifecycle_activities(self) -> list[Callable[..., Any]]:
        return [self.plan_rollback]

    def deploy_activities(self) -> list[Callable[..., Any]]:
        """The fallback reads the project's repository: it runs where the repositories are."""
        return [self.find_last_good_release]

    @activity.defn(name="plan_rollback")
    async def plan_rollback(self, request: PlanRollback) -> RollbackPlan:
        """Check an operator's rollback target and find what is live; writes nothing."""
        async with self._sessions() as session:
            target = await session.get(Deployment, request.target_deployment_id)
            if target is None or target.tenant_id != request.tenant_id:
                raise not_found(
                    f"no deployment {request.target_deployment_id} for tenant {request.tenant_id}"
                )
            if target.project_id is None or target.commit_sha is None:
                raise not_found(f"deployment {target.id} has no project or commit any more")
            if target.verified_at is None:
                raise refused(
                    ErrorType.ROLLBACK_TARGET_NEVER_SUCCEEDED,
                    f"deployment {target.id} never succeeded (status {target.status.value}); "
                    "only a verified release can be restored",
                )
            await self._refuse_too_old(session, target)
            live = await deployments.live(session, target.project_id, target.environment)
            if live is None:
                raise refused(
                    ErrorType.NO_RELEASE_TO_RESTORE,
                    f"nothing is live in {target.environment.value} to roll back",
                )
            if live.commit_sha == target.commit_sha:
                raise refused(
                    ErrorType.ROLLBACK_TARGET_IS_LIVE,
                    f"the release of deployment {target.id} ({target.commit_sha}) is already "
                    f"live in {target.environment.value} (deployment {live.id})",
                )
            plan = await session.get(DeploymentPlan, target.plan_id)
            github = await github_connector_of(session, target.project_id)
            return RollbackPlan(
                github_connector_id=github,
                tenant_id=target.tenant_id,
                project_id=target.project_id,
                plan_id=target.plan_id,
                prompt_request_id=plan.prompt_request_id if plan else None,
                environment=target.environment,
                commit_sha=target.commit_sha,
                live_deployment_id=live.id,
            )

    async def _refuse_too_old(self, session: AsyncSession, target: Deployment) -> None:
        """A target out of retention (models.release_retention) has, or soon will have, no
        release ref keeping its commit: refused before anything is recorded."""
        assert target.project_id is not None
        kept = retention(
            await read_release_facts(session, target.project_id), self._release_retention
        )
        if not kept.too_old(target.id):
            return
        environment = target.environment.value
        raise refused(
            ErrorType.ROLLBACK_TARGET_TOO_OLD,
            f"deployment {target.id} is too old to roll back to: "
            f"{kept.rank.get(target.id, 1) - 1} verified releases of {environment} came after "
            f"it, and only the live release and the {kept.keep} before it stay rollback targets "
            f"(release retention {kept.keep}); its release ref is pruned, or will be by the "
            "next verified production release",
        )

    @activity.defn(name="find_last_good_release")
    async def find_last_good_release(self, request: FindLastGoodRelease) -> LastGoodRelease:
        return await last_good_release(self._sessions, request, self._repositories)
