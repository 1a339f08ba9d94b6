"""`make demo`'s GitHub part: the demo tenant's storefront lives on GitHub, so a request becomes
a pull request, the tenant's CI goes green on it, staging and production are GitHub Deployments,
and changeflow merges it.

GitHub here is a LOCAL STAND-IN (scripts/github_stand_in/: git over smart HTTP by git's own
`git http-backend`, the REST endpoints with GitHub's shapes, an App with installation tokens,
a scripted CI; not GitHub). Everything else is the product: the `github` connector (encrypted
credentials, tested), the lifecycle and deployment workflows on the demo's worker, git reaching
the repository with the App's installation token.
"""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from activities.connectors import ConnectorService
from infra.settings import Settings
from models import Project
from models.db import SessionFactory
from models.lifecycle import PromptStatus
from models.projects import ConnectorKind
from scripts.github_stand_in import CheckScript, GitHubStandIn, github_stand_in
from scripts.sample_repo import SAMPLE_CHECK_COMMAND, create_sample_repo
from workers.registry import Dependencies, credential_store
from workflows.contracts.lifecycle import PromptRequestResult

GITHUB_PROMPT = "set free_shipping_threshold to 75"
# The tenant's CI on every new head: a check run (as GitHub Actions reports) and a status.
CI = (CheckScript("build", outcome="success"), CheckScript("lint", kind="status"))


@dataclass
class GitHubOutcome:
    result: PromptRequestResult
    pull_url: str
    merged: bool
    # Each GitHub Deployment: its environment and its last status.
    deployments: list[tuple[str, str]]

    @property
    def ok(self) -> bool:
        return (
            self.result.status is PromptStatus.COMPLETED
            and self.merged
            and [d for d in self.deployments if d[1] != "success"] == []
            and {e for e, _ in self.deployments} == {"staging", "production"}
        )


# Runs the request on a project the way the demo runs its others (approval by its approver).
RunRequest = Callable[[Project, str], Awaitable[PromptRequestResult]]


async def run_github(
    settings: Settings,
    client: Client,
    sessions: SessionFactory,
    tenant_id: uuid.UUID,
    run_request: RunRequest,
    *,
    number: int = 5,
) -> GitHubOutcome:
    root = settings.data_dir.resolve() / "demo" / f"github-{uuid.uuid4().hex[:6]}"
    with github_stand_in(root / "hub") as hub:
        return await _on_github(settings, client, sessions, tenant_id, run_request, hub, number)


async def _on_github(
    settings: Settings,
    client: Client,
    sessions: SessionFactory,
    tenant_id: uuid.UUID,
    run_request: RunRequest,
    hub: GitHubStandIn,
    number: int,
) -> GitHubOutcome:
    app = hub.create_app()
    name = f"storefront-{uuid.uuid4().hex[:6]}"
    repository = hub.create_repository("acme", name)
    installation = hub.install(app, "acme", [repository.full_name])
    for script in CI:
        hub.state.add_check_script(repository, script)
    sample = await asyncio.to_thread(create_sample_repo, hub.state.root / "sample")
    await _git(sample, "push", "--quiet", "--force", str(repository.bare.path), "main:main")
    print(
        f"{number}) a change on GitHub: {GITHUB_PROMPT!r}\n"
        f"   repository {repository.full_name} on a LOCAL STAND-IN of GitHub at {hub.url} "
        "(scripts/github_stand_in: git and GitHub's REST shapes, a scripted CI; not GitHub)",
        flush=True,
    )
    project = Project(
        tenant_id=tenant_id,
        name="Storefront on GitHub",
        slug=name,
        repo_url=hub.clone_url(repository),
        default_branch="main",
        check_command=SAMPLE_CHECK_COMMAND,
    )
    async with sessions() as session:
        session.add(project)
        await session.commit()
        await session.refresh(project)
    store, connections = credential_store(
        Dependencies(settings=settings, sessions=sessions, client=client)
    )
    service = ConnectorService(sessions, store, connections)
    connector = await service.create(
        tenant_id=tenant_id,
        kind=ConnectorKind.GITHUB,
        name="Storefront on the GitHub stand-in",
        config={"repository": repository.full_name, "api_url": hub.url},
        credentials={
            "app_id": str(app.id),
            "installation_id": str(installation.id),
            "private_key": app.private_key_pem,
            "webhook_secret": app.webhook_secret,
        },
        project_id=project.id,
    )
    tested = await service.test(connector.id)
    print(f"   github connector (an App, installation {installation.id}): {tested.status.value}")
    try:
        result = await run_request(project, GITHUB_PROMPT)
    finally:
        # The stand-in goes with the demo: its connector must not be used after it.
        await service.disable(connector.id)
    pulls = [p for (repo, _), p in sorted(hub.state.pulls.items()) if repo == repository.full_name]
    deployments = [
        (d.environment, d.statuses[-1].state if d.statuses else "none")
        for d in sorted(hub.state.deployments.values(), key=lambda d: d.id)
        if d.repository == repository.full_name
    ]
    outcome = GitHubOutcome(
        result=result,
        pull_url=hub.pull_url(repository, pulls[0].number) if pulls else "",
        merged=bool(pulls) and pulls[0].merged,
        deployments=deployments,
    )
    for pull in pulls:
        state = f"merged by {pull.merged_by}" if pull.merged else pull.state
        print(
            f"   pull request #{pull.number} on the GitHub stand-in: {outcome.pull_url} ({state})"
        )
        checks = hub.state.check_states(repository, pull.head_sha)
        print("   its checks: " + ", ".join(f"{n} {s}" for n, s in sorted(checks.items())))
    print(
        "   GitHub Deployments: " + ", ".join(f"{e} {s}" for e, s in deployments),
        flush=True,
    )
    print(f"   main on the stand-in is now {repository.bare.resolve('refs/heads/main')}\n")
    return outcome


async def _git(repo: Path, *args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "git", "-C", str(repo), *args, stdout=asyncio.subprocess.DEVNULL
    )
    if await process.wait() != 0:
        raise RuntimeError(f"git {args[0]} failed in {repo}")
