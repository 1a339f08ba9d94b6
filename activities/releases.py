"""Releases: put a deployment's commit on its environment branch, verify it with the project's
check command, undo a cancelled one, and keep the default branch equal to production, all
through a DeployTarget.

They report facts (the release, the verdict, the undo) and write the facts to the row; the
deployment's status is the workflow's to decide and persist (DeploymentActivities.mark_deployment).
Every activity is idempotent: a retry finds the rows and the release its first attempt made.
"""

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.change_engine import RepositoryError
from activities.deploy_target import DeployTarget, DeployTargetError
from activities.deployments import (
    MAX_OUTPUT_CHARS,
    locked,
    project_of,
    view,
)
from activities.git_store import (
    delete_branch,
    fast_forward,
    is_ancestor,
    move_ref,
    resolve_commit,
    restore_tree,
)
from activities.heartbeats import heartbeating
from activities.jobs import cancelled_by_workflow, finish_job, start_job
from activities.release_refs import prune_release_refs
from activities.remote_repository import RemoteUnavailable, Repositories, default_repositories
from activities.rollbacks import last_good_release
from models import (
    ChangeJobKind,
    ChangeJobStatus,
    Deployment,
    DeploymentEnvironment,
    Project,
)
from models.base import utcnow
from models.db import SessionFactory
from models.release_retention import DEFAULT_RELEASE_RETENTION, compensation_release_id
from workflows.contracts.deployment import (
    DeploymentView,
    FindLastGoodRelease,
    RecordVerdict,
    ReleaseOutcome,
    ReleaseStep,
    VerificationOutcome,
)
from workflows.contracts.errors import ErrorType, refused
from workflows.contracts.github import request_branch

HEARTBEAT_EVERY_S = 2.0
# How long a check's verdict may take to reach its row before the check reports it anyway.
KEEP_VERDICT_WITHIN_S = 5.0


def _job_key(step: ReleaseStep, suffix: str) -> str:
    return f"{activity.info().workflow_id}:{step.step}:{suffix}:{step.deployment_id}"


def _file_url(path: str) -> str:
    return Path(os.path.abspath(path)).as_uri()


# A release job's record of the environment's release before it (None: it ran nothing).
PREVIOUS = "previous_commit_sha"
_UNSAID = object()


class ReleaseActivities:
    def __init__(
        self,
        *,
        sessions: SessionFactory,
        target: DeployTarget,
        repositories: Repositories | None = None,
        release_retention: int = DEFAULT_RELEASE_RETENTION,
    ) -> None:
        """`release_retention`: how many verified releases before the live one each environment
        keeps as rollback targets (Settings.release_retention); older release refs are pruned."""
        self._sessions = sessions
        self._target = target
        self._repositories = repositories or default_repositories(sessions)
        self._release_retention = release_retention

    async def _repository(self, project: Project, commit: str | None = None) -> Path:
        """The project's repository to release from: fetched (a remote's mirror) before a
        release, only when it lacks `commit` before the steps after one."""
        try:
            if commit is None:
                return await self._repositories.local(project)
            return await self._repositories.holding(project, commit)
        except RepositoryError as exc:
            raise _target_error(DeployTargetError(str(exc))) from None

    def activities(self) -> list[Callable[..., Any]]:
        """Work on the project's repository, for the deploy task queue."""
        return [
            self.release_deployment,
            self.run_check,
            self.record_verdict,
            self.verify_deployment,
            self.compensate_deployment,
            self.push_revert_branch,
        ]

    @activity.defn(name="release_deployment")
    async def release_deployment(self, step: ReleaseStep) -> ReleaseOutcome:
        """Put the commit on the environment branch (a ROLLBACK job when the deployment restores
        an earlier release)."""
        async with self._sessions() as session:
            row = await locked(session, step.deployment_id)
            project = await project_of(session, row)
        repo = await self._repository(project)
        # Recorded before releasing, so compensation knows what to restore even if this
        # attempt dies half-way and a retry finds its own commit already released.
        current = await self._target.current_release(repo=repo, environment=row.environment.value)
        if step.undoes_commit_sha and current not in (step.undoes_commit_sha, step.commit_sha):
            # Another release came since the cancelled one: the environment no longer runs it.
            raise refused(
                ErrorType.RELEASE_SUPERSEDED,
                f"{row.environment.value} runs {(current or 'nothing')[:12]} now, not "
                f"{step.undoes_commit_sha[:12]}: nothing to undo",
            )
        job_key = _job_key(step, step.job_kind.value)
        async with self._sessions() as session:
            row = await locked(session, step.deployment_id)
            if row.previous_commit_sha is None and current != step.commit_sha:
                row.previous_commit_sha = current
            job = await start_job(
                session,
                job_key=job_key,
                tenant_id=row.tenant_id,
                kind=step.job_kind,
                project_id=row.project_id,
                prompt_request_id=step.prompt_request_id,
                plan_id=row.plan_id,
                deployment_id=row.id,
                details={
                    "commit_sha": step.commit_sha,
                    "environment": row.environment.value,
                    PREVIOUS: current,
                },
            )
            await session.commit()
            previous = row.previous_commit_sha
        # What the environment ran before this deployment, as the job's first attempt found it
        # before releasing: a retry on another host (whose disk holds no release record) finds
        # this commit released already and must not take it for the release before, or a
        # cancel would "restore" the change instead of withdrawing it. Jobs from before this
        # was kept say nothing, and the release's own answer is taken, as then.
        first_seen = job.details.get(PREVIOUS, _UNSAID)
        if row.environment is DeploymentEnvironment.PRODUCTION and step.job_kind is not (
            ChangeJobKind.ROLLBACK
        ):
            await self._refuse_moved_base(repo, project, step, job_key)
        try:
            if step.job_kind is ChangeJobKind.ROLLBACK:
                result = await heartbeating(
                    self._target.rollback(
                        repo=repo,
                        environment=row.environment.value,
                        to_commit_sha=step.commit_sha,
                        deployment_id=row.id,
                    ),
                    every_s=HEARTBEAT_EVERY_S,
                )
            else:
                result = await heartbeating(
                    self._target.release(
                        repo=repo,
                        environment=row.environment.value,
                        commit_sha=step.commit_sha,
                        deployment_id=row.id,
                    ),
                    every_s=HEARTBEAT_EVERY_S,
                )
        except DeployTargetError as exc:
            await self._fail_job(job_key, exc)
            raise _target_error(exc) from None
        log_url = _file_url(result.log_path)
        async with self._sessions() as session:
            row = await locked(session, step.deployment_id)
            said = result.previous_commit_sha if first_seen is _UNSAID else first_seen
            row.previous_commit_sha = row.previous_commit_sha or said
            previous = row.previous_commit_sha
            row.log_url = log_url
            if result.diff_path:
                row.diff_url = _file_url(result.diff_path)
            row.updated_at = utcnow()
            await finish_job(
                session,
                job_key=job_key,
                status=ChangeJobStatus.SUCCEEDED,
                details={PREVIOUS: previous, "log_path": result.log_path},
            )
            await session.commit()
        return ReleaseOutcome(
            commit_sha=result.commit_sha,
            previous_commit_sha=previous,
            log_url=log_url,
            diff_url=row.diff_url,
        )

    @activity.defn(name="verify_deployment")
    async def verify_deployment(self, step: ReleaseStep) -> VerificationOutcome:
        """run_check then record_verdict in one activity: what runs started before the two
        were apart still call (an outage after the check fails this one; not used any more)."""
        verdict = await self.run_check(step)
        await self.record_verdict(RecordVerdict(step=step, verdict=verdict))
        return verdict

    @activity.defn(name="run_check")
    async def run_check(self, step: ReleaseStep) -> VerificationOutcome:
        """The project's check command against the release; returns the verdict without
        recording it (record_verdict does, retried on its own: an outage after the check must
        not lose it or run the check again). The verdict is kept on the Deployment row as soon
        as the check ends: a retry on any worker, whose disk never saw the check, returns it."""
        job_key = _job_key(step, "validation")
        async with self._sessions() as session:
            row = await locked(session, step.deployment_id)
            known = _kept_verdict(row, step.commit_sha)
            if known is not None:  # an earlier attempt ran the check to its end
                return known
            project = await project_of(session, row)
            check_command = project.check_command
            await start_job(
                session,
                job_key=job_key,
                tenant_id=row.tenant_id,
                kind=ChangeJobKind.VALIDATION,
                project_id=row.project_id,
                prompt_request_id=step.prompt_request_id,
                plan_id=row.plan_id,
                deployment_id=row.id,
                details={"check_command": check_command, "commit_sha": step.commit_sha},
            )
            await session.commit()
        try:
            if check_command.strip():
                repo = await self._repository(project, step.commit_sha)
                result = await heartbeating(
                    self._target.verify(
                        repo=repo,
                        environment=row.environment.value,
                        commit_sha=step.commit_sha,
                        check_command=check_command,
                        deployment_id=row.id,
                    ),
                    every_s=HEARTBEAT_EVERY_S,
                )
                ok, output, duration = result.ok, result.output, result.duration_s
                log_url = _file_url(result.log_path)
            else:
                ok, output, duration, log_url = True, "no check command configured", 0.0, ""
        except asyncio.CancelledError:
            if cancelled_by_workflow():
                async with self._sessions() as session:
                    await finish_job(
                        session,
                        job_key=job_key,
                        status=ChangeJobStatus.CANCELLED,
                        error="cancelled",
                    )
                    await session.commit()
            raise
        except DeployTargetError as exc:
            await self._fail_job(job_key, exc)
            raise _target_error(exc) from None
        verdict = VerificationOutcome(
            ok=ok, output=output[-MAX_OUTPUT_CHARS:], log_url=log_url, duration_s=duration
        )
        await self._keep_verdict(step, verdict)
        return verdict

    async def _keep_verdict(self, step: ReleaseStep, verdict: VerificationOutcome) -> None:
        """The verdict on the Deployment row, for a retry on a worker whose disk never saw the
        check. Best effort: with the database away, the verdict still goes back to the workflow
        (the check must not fail for an outage after it; record_verdict rides it out)."""
        try:
            async with asyncio.timeout(KEEP_VERDICT_WITHIN_S), self._sessions() as session:
                row = await locked(session, step.deployment_id)
                row.check_verdict = {"commit_sha": step.commit_sha, **verdict.model_dump()}
                await session.commit()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            activity.logger.warning("the check's verdict was not kept on its row: %s", exc)

    @activity.defn(name="record_verdict")
    async def record_verdict(self, record: RecordVerdict) -> VerificationOutcome:
        """The check's verdict, persisted: its output, the validation job's outcome, and after a
        verified production release the default branch. Idempotent: a retry finds it all done."""
        step, verdict = record.step, record.verdict
        ok, output = verdict.ok, verdict.output
        async with self._sessions() as session:
            row = await locked(session, step.deployment_id)
            project = await session.get(Project, row.project_id)
            row.verification_output = output[-MAX_OUTPUT_CHARS:]
            row.log_url = verdict.log_url or row.log_url
            row.updated_at = utcnow()
            await finish_job(
                session,
                job_key=_job_key(step, "validation"),
                status=ChangeJobStatus.SUCCEEDED if ok else ChangeJobStatus.FAILED,
                error=None if ok else output[-2000:],
                details={"duration_s": verdict.duration_s, "ok": ok},
            )
            await session.commit()
        if ok and row.environment is DeploymentEnvironment.PRODUCTION and project is not None:
            # Still in the lane: the next production deployment sees the default branch moved.
            repo = await self._repository(project, step.commit_sha)
            await self._ship_to_default_branch(repo, project, row, step)
            await self._prune_release_refs(repo, project)
        return verdict

    @activity.defn(name="compensate_deployment")
    async def compensate_deployment(self, step: ReleaseStep) -> DeploymentView:
        """Undo a cancelled deployment's release: restore what the environment ran before
        (ROLLBACK job), or withdraw a first release. Nothing when it never started releasing."""
        async with self._sessions() as session:
            row = await locked(session, step.deployment_id)
            if row.started_at is None:
                return view(row)
            project = await project_of(session, row)
            restore = row.previous_commit_sha
        first_release = False
        if restore is None:
            assert row.project_id is not None
            good = await last_good_release(
                self._sessions,
                FindLastGoodRelease(
                    project_id=row.project_id,
                    environment=row.environment,
                    exclude_deployment_id=row.id,
                ),
                self._repositories,
            )
            # Nothing ever succeeded there and the release found no branch: it was the first.
            first_release = good.deployment_id is None
            restore = good.commit_sha
        job_key = _job_key(step, "compensation")
        async with self._sessions() as session:
            await start_job(
                session,
                job_key=job_key,
                tenant_id=row.tenant_id,
                kind=ChangeJobKind.ROLLBACK,
                project_id=row.project_id,
                prompt_request_id=step.prompt_request_id,
                plan_id=row.plan_id,
                deployment_id=row.id,
                details={"restore_commit_sha": restore, "reason": "cancelled mid-deploy"},
            )
            await session.commit()
        log_path: str | None = None  # a withdrawal keeps the release's own log
        repo = await self._repository(project)
        try:
            if first_release:  # as if it never ran: the environment has no branch again
                await self._target.withdraw(
                    repo=repo, environment=row.environment.value, commit_sha=step.commit_sha
                )
            else:
                result = await self._target.rollback(
                    repo=repo,
                    environment=row.environment.value,
                    to_commit_sha=restore,
                    # The target keys releases by deployment; the undo is a release of its own.
                    deployment_id=compensation_release_id(row.id),
                )
                log_path = result.log_path
        except DeployTargetError as exc:
            await self._fail_job(job_key, exc)
            raise _target_error(exc) from None
        async with self._sessions() as session:
            row = await locked(session, step.deployment_id)
            row.log_url = _file_url(log_path) if log_path else row.log_url
            row.updated_at = utcnow()
            await finish_job(session, job_key=job_key, status=ChangeJobStatus.SUCCEEDED)
            await session.commit()
            return view(row)

    @activity.defn(name="push_revert_branch")
    async def push_revert_branch(self, step: ReleaseStep) -> str | None:
        """A GitHub project's rollback, released and not yet verified: the branch
        `changeflow/<deployment id>`, from the default branch's head plus a commit restoring
        the rolled-back-to tree, pushed for its pull request (GitHubDeployTarget.revert). None,
        and no branch, when the default branch holds that tree already (a release GitHub never
        merged). Safe to repeat."""
        async with self._sessions() as session:
            row = await locked(session, step.deployment_id)
            project = await project_of(session, row)
        repo = await self._repository(project)
        main = project.default_branch
        branch = request_branch(step.deployment_id)
        ref = f"refs/heads/{branch}"
        head = await resolve_commit(repo, f"refs/heads/{main}")
        if head is None:
            raise _target_error(DeployTargetError(f"{main} does not exist"))
        try:
            if await resolve_commit(repo, ref) is None:
                await move_ref(repo, ref, head, None)
            message = (
                f"Revert {main} to {step.commit_sha[:12]}, restored in production\n\n"
                f"Production was rolled back by deployment {row.id}"
                + (f" (undoing deployment {row.rollback_of_id})" if row.rollback_of_id else "")
                + f"; {main} gets the tree production runs.\n"
            )
            reverted = await restore_tree(repo, branch, step.commit_sha, message)
            if reverted == head:
                await delete_branch(repo, branch)
                return None
        except RepositoryError as exc:
            raise _target_error(DeployTargetError(str(exc))) from None
        return branch

    # --- the default branch follows production ---

    async def _refuse_moved_base(
        self, repo: Path, project: Project | None, step: ReleaseStep, job_key: str
    ) -> None:
        """A change must hold everything shipped before it: refuse, before releasing anything,
        a commit that does not descend from the default branch (it moved since the commit)."""
        if project is None:
            return
        head = await resolve_commit(repo, f"refs/heads/{project.default_branch}")
        if head is None or await is_ancestor(repo, head, step.commit_sha):
            return
        message = (
            f"{project.default_branch} moved to {head[:12]} since {step.commit_sha[:12]} was "
            "committed; the change must be rebased onto it before it ships"
        )
        await self._fail_job(job_key, RuntimeError(message))
        raise refused(ErrorType.BASE_MOVED, message)

    async def _ship_to_default_branch(
        self, repo: Path, project: Project, row: Deployment, step: ReleaseStep
    ) -> None:
        """After production verified: the default branch holds what production runs. A change
        fast-forwards it; a rollback adds a revert commit of the restored tree (nothing when
        the branch holds that tree already, as after an automatic rollback)."""
        branch = project.default_branch
        if step.job_kind is ChangeJobKind.ROLLBACK:
            message = (
                f"Revert {branch} to {step.commit_sha[:12]}, restored in production\n\n"
                f"Production was rolled back by deployment {row.id}"
                + (f" (undoing deployment {row.rollback_of_id})" if row.rollback_of_id else "")
                + f"; {branch} now holds the tree production runs.\n"
            )
            await restore_tree(repo, branch, step.commit_sha, message)
        elif not await fast_forward(repo, branch, step.commit_sha):
            # Only a push from outside the lane gets here (releases refuse a moved base).
            activity.logger.warning(
                "%s moved past %s while it was verified; left as it is",
                branch,
                step.commit_sha[:12],
            )

    async def _prune_release_refs(self, repo: Path, project: Project) -> None:
        """After each verified production release, the project's release refs the retention
        rule lets go are deleted (activities/release_refs.py). Housekeeping: a failure is logged
        and the next production release tries again; the release itself stands."""
        try:
            done = await prune_release_refs(
                self._sessions, repo, project.id, self._release_retention
            )
        except (RepositoryError, RemoteUnavailable, SQLAlchemyError, OSError) as exc:
            activity.logger.warning("release refs not pruned this time: %s", exc)
            return
        if done.pruned:
            activity.logger.info(
                "pruned %d release refs of project %s; %d kept",
                len(done.pruned),
                project.id,
                done.kept,
            )

    async def _fail_job(self, job_key: str, exc: Exception) -> None:
        async with self._sessions() as session:
            await finish_job(
                session, job_key=job_key, status=ChangeJobStatus.FAILED, error=str(exc)
            )
            await session.commit()


def _kept_verdict(row: Deployment, commit_sha: str) -> VerificationOutcome | None:
    """The verdict of the check an earlier attempt ran on `commit_sha`, if one ended."""
    kept = row.check_verdict
    if not kept or kept.get("commit_sha") != commit_sha:
        return None
    return VerificationOutcome.model_validate(kept)


def _target_error(exc: DeployTargetError) -> ApplicationError:
    """The target's errors do not get better by retrying."""
    return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)
