"""Change engines turn a tenant's prompt into a change of the project's git repository.

A `ChangeEngine` plans a change (a unified diff on a base commit, its risk and token estimate)
and applies an approved one as a commit on a branch; the errors below are the only failures it
reports. The built-in engine is `activities.git_change_engine.GitChangeEngine`; the model engine
is `activities.model_engine.ModelChangeEngine`.
"""

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from models.lifecycle import RiskLevel


class ChangeProposal(BaseModel):
    diff: str  # unified diff against base_commit
    diff_summary: str  # human readable, a few lines
    files_changed: list[str]
    risk_level: RiskLevel
    risk_reasons: list[str]
    token_estimate: int  # from the prompt text
    base_commit: str
    # The commit already made of this diff on base_commit (a rebased plan): applied as it is.
    commit_sha: str | None = None


class AppliedChange(BaseModel):
    commit_sha: str  # commit on `branch` implementing the proposal
    tokens_used: int  # what the work actually cost
    # The commit's parent and its diff against it: the proposal's own unless it was rebased.
    base_commit: str = ""
    diff: str = ""


@dataclass(frozen=True)
class ChangeStep:
    """Which request and plan revision the engine works for: the key of what an engine that
    pays for outside calls records (activities.model_calls)."""

    tenant_id: uuid.UUID
    prompt_request_id: uuid.UUID
    revision: int


class ChangeEngine(Protocol):
    async def plan(
        self,
        *,
        repo: Path,
        base_branch: str,
        prompt: str,
        step: ChangeStep | None = None,
        # The project's check command: the files it runs are part of the plan's risk
        # (activities.risk), so a change cannot switch off its own verification unseen.
        check_command: str = "",
    ) -> ChangeProposal: ...

    async def apply(
        self,
        *,
        repo: Path,
        proposal: ChangeProposal,
        prompt: str,
        branch: str,
        onto: str | None = None,
        step: ChangeStep | None = None,
    ) -> AppliedChange: ...


class ChangeEngineError(Exception):
    """Base of the engine's errors; none of them gets better by retrying.

    `public` is the wording for the workflow history, where typed refusals stay readable
    (infra/codec.py): give it when the message quotes what a model or a tenant wrote, and the
    whole message then travels only in the refusal's encrypted details."""

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public


class ChangeRequestInvalid(ChangeEngineError):
    """The prompt cannot be acted on (empty, too long, names something absent, changes nothing)."""


class RepositoryError(ChangeEngineError):
    """The repository is missing or unusable, or a branch holds something unexpected."""


class RebaseConflict(ChangeEngineError):
    """The approved change does not apply cleanly to the branch it must be committed on."""
