"""The GitHub stand-in as the product meets it: one App installed on one repository holding the
sample storefront, a `github` connector made with the App's credentials (encrypted like any
connector's), and helpers that push a request's branch the way the git layer will.

The fixture `github_world` (tests/conftest.py) yields a `GitHubWorld`; use it from any test.
`github_shop` builds on it a whole GitHub project run by real workers (`GitHubShop`), the
preamble of every lifecycle scenario (tests/test_github_lifecycle.py)."""

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from temporalio.client import Client

from activities.connectors import Connections, ConnectorService
from activities.credentials import CredentialStore, KeyRing
from activities.github_client import GitHubAccess, GitHubClients, GitHubRepository
from activities.github_target import GitHubDeployTarget
from client.lifecycle import LifecycleClient
from infra.settings import Settings
from models import Project, PromptStatus
from models.db import SessionFactory
from models.projects import Connector, ConnectorKind
from models.tenancy import Tenant
from scripts.github_stand_in import CheckScript, GitHubStandIn, github_stand_in
from scripts.github_stand_in.records import App, Installation, PullRequest, Repository
from scripts.github_stand_in.state import GitHubState
from tests import lifecycle_support
from tests.factories import make_tenant
from tests.lifecycle_support import Shop, make_shop
from tests.workers import running_workers, test_settings
from workers.registry import connector_clients
from workflows.contracts.lifecycle import PromptRequestResult

SAMPLE_FILES = {
    "index.html": "<h1>Storefront</h1>\n",
    "theme/colors.css": "body { color: #222; }\n",
    "README.md": "# Storefront\n",
}


def git(*args: str, cwd: Path | None = None) -> str:
    environment = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Tester",
        "GIT_AUTHOR_EMAIL": "tester@example.com",
        "GIT_COMMITTER_NAME": "Tester",
        "GIT_COMMITTER_EMAIL": "tester@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise AssertionError(f"git {args[0]} failed: {done.stderr}")
    return done.stdout.strip()


@dataclass
class GitHubWorld:
    hub: GitHubStandIn
    app: App
    installation: Installation
    repository: Repository
    workdir: Path
    # Content creation serialised as in production, without the one-second spacing.
    clients: GitHubClients = field(
        default_factory=lambda: GitHubClients(write_spacing=timedelta(0))
    )

    @property
    def access(self) -> GitHubAccess:
        return GitHubAccess(
            api_url=self.hub.url,
            owner=self.repository.owner,
            repo=self.repository.name,
            app_id=str(self.app.id),
            installation_id=self.installation.id,
            private_key=self.app.private_key_pem,
        )

    def connector_config(self) -> dict[str, Any]:
        return {"repository": self.repository.full_name, "api_url": self.hub.url}

    def app_credentials(self) -> dict[str, str]:
        return {
            "app_id": str(self.app.id),
            "installation_id": str(self.installation.id),
            "private_key": self.app.private_key_pem,
            "webhook_secret": self.app.webhook_secret,
        }

    def repository_client(self) -> GitHubRepository:
        return self.clients.repository(self.access)

    def target(self, **options: Any) -> GitHubDeployTarget:
        return GitHubDeployTarget(self.repository_client(), **options)

    def token(self) -> str:
        return self.hub.state.issue_installation_token(self.installation.id).value

    def push_branch(self, branch: str, files: dict[str, str], *, base: str = "main") -> str:
        """Commit `files` on `branch` (from `base` as GitHub has it) and push it, as the git
        layer pushes a request's change; the pushed sha."""
        if not (self.workdir / ".git").exists():
            git(
                "clone",
                "--quiet",
                self.hub.clone_url(self.repository, self.token()),
                str(self.workdir),
            )
        git("fetch", "--quiet", "origin", cwd=self.workdir)
        git("checkout", "--quiet", "-B", branch, f"origin/{base}", cwd=self.workdir)
        for name, text in files.items():
            (self.workdir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.workdir / name).write_text(text)
        git("add", "-A", cwd=self.workdir)
        git("commit", "--quiet", "-m", f"change on {branch}", cwd=self.workdir)
        # The token may have expired (a test expires them): push with a fresh one.
        git(
            "remote",
            "set-url",
            "origin",
            self.hub.clone_url(self.repository, self.token()),
            cwd=self.workdir,
        )
        git("push", "--quiet", "--force", "origin", branch, cwd=self.workdir)
        return git("rev-parse", "HEAD", cwd=self.workdir)

    def push_revert(self, branch: str, commit: str, *, base: str = "main") -> str:
        """A branch holding `git revert` of `commit` (a merge: its first parent kept)."""
        git(
            "remote",
            "set-url",
            "origin",
            self.hub.clone_url(self.repository, self.token()),
            cwd=self.workdir,
        )
        git("fetch", "--quiet", "origin", cwd=self.workdir)
        git("checkout", "--quiet", "-B", branch, f"origin/{base}", cwd=self.workdir)
        parents = git("log", "-1", "--format=%P", commit, cwd=self.workdir).split()
        mainline = ["-m", "1"] if len(parents) > 1 else []
        git("revert", "--no-edit", *mainline, commit, cwd=self.workdir)
        git("push", "--quiet", "--force", "origin", branch, cwd=self.workdir)
        return git("rev-parse", "HEAD", cwd=self.workdir)


@dataclass
class GitHubConnector:
    tenant: Tenant
    connector: Connector
    service: ConnectorService
    connections: Connections


async def connect_github(
    sessions: SessionFactory,
    world: GitHubWorld,
    *,
    credentials: dict[str, str] | None = None,
    tenant: Tenant | None = None,
    keys: KeyRing | None = None,
) -> GitHubConnector:
    """A tenant's github connector made with the world's App, created and tested as an
    operator does it; its Connections share the world's token cache. `keys`: the key ring
    another process (the webhooks endpoint) reads the credentials with."""
    tenant = tenant or await make_tenant(sessions, name=f"Hub {uuid.uuid4().hex[:4]}")
    store = CredentialStore(sessions, keys or KeyRing.parse(f"k1:{KeyRing.new_key()}", "k1"))
    connections = Connections(store, api_version="2026-10", github=world.clients)
    service = ConnectorService(sessions, store, connections)
    created = await service.create(
        tenant_id=tenant.id,
        kind=ConnectorKind.GITHUB,
        name="Storefront on GitHub",
        config=world.connector_config(),
        credentials=credentials or world.app_credentials(),
    )
    tested = await service.test(created.id)
    return GitHubConnector(tenant, tested, service, connections)


def github_world_in(root: Path, *, webhook_url: str | None = None) -> Iterator[GitHubWorld]:
    with github_stand_in(root / "hub", webhook_url=webhook_url) as hub:
        app = hub.create_app()
        repository = hub.create_repository("acme", "storefront", files=dict(SAMPLE_FILES))
        installation = hub.install(app, "acme", ["acme/storefront"])
        yield GitHubWorld(hub, app, installation, repository, root / "work")


# How long a scenario waits for a request's outcome before it reports where the request is.
OUTCOME_WITHIN_S = 120
# The webhooks process (tests/test_github_webhooks.py's webhooks_process): its base URL.
WebhooksProcess = Callable[[Client, SessionFactory, Path], AbstractAsyncContextManager[str]]


@dataclass
class GitHubShop:
    """The sample storefront as a GitHub project: its repository is the stand-in's
    acme/storefront, reached over smart HTTP with the App's installation tokens (no git
    connector), its `github` connector scoped to it. `running()` runs the workers (and the
    webhooks process); the rest reads what a user sees on GitHub."""

    shop: Shop
    world: GitHubWorld
    settings: Settings
    connector_id: uuid.UUID
    client: Client
    sessions: SessionFactory
    lifecycle: LifecycleClient
    webhooks_process: WebhooksProcess
    workdir: Path

    # -- the world ------------------------------------------------------------------------

    @property
    def stand_in(self) -> GitHubStandIn:
        return self.world.hub

    @property
    def state(self) -> GitHubState:
        return self.world.hub.state

    @property
    def repository(self) -> Repository:
        return self.world.repository

    def green_ci(self) -> None:
        """The tenant's CI: a check run (as GitHub Actions) and a commit status on every head."""
        self.state.add_check_script(self.repository, CheckScript("build", outcome="success"))
        self.state.add_check_script(
            self.repository, CheckScript("lint", kind="status", outcome="success")
        )

    @contextlib.asynccontextmanager
    async def ticking(self, seconds: float = 31.0) -> AsyncIterator[None]:
        """The stand-in's clock jumps ahead every half second, so scripted checks end."""

        async def tick() -> None:
            while True:
                await asyncio.sleep(0.5)
                self.stand_in.clock.advance(seconds)

        ticker = asyncio.create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()

    # -- running requests -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self, *, webhooks: bool = False) -> AsyncIterator[None]:
        """The workers for the block; with `webhooks`, the webhooks process too, the App's
        webhook delivering to it."""
        async with contextlib.AsyncExitStack() as stack:
            if webhooks:
                base = await stack.enter_async_context(
                    self.webhooks_process(self.client, self.sessions, self.workdir / "webhooks")
                )
            await stack.enter_async_context(
                running_workers(self.client, self.sessions, self.settings)
            )
            if webhooks:
                self.stand_in.webhooks.deliver_to(f"{base}/webhooks/github/{self.connector_id}")
            yield

    async def submit(self, prompt: str) -> uuid.UUID:
        return await lifecycle_support.submit(self.lifecycle, self.shop, prompt)

    async def outcome(self, request_id: uuid.UUID) -> PromptRequestResult:
        try:
            async with asyncio.timeout(OUTCOME_WITHIN_S):
                return await self.lifecycle.wait_for_outcome(request_id)
        except TimeoutError:
            status = await self.lifecycle.status(request_id)
            raise AssertionError(f"no outcome; the request is at {status!r}") from None

    async def ship(self, prompt: str) -> PromptRequestResult:
        """Submit `prompt` and wait for its request's outcome."""
        return await self.outcome(await self.submit(prompt))

    async def staging_waits_for_checks(self, request_id: uuid.UUID) -> None:
        """Until staging verification waits for the checks on GitHub."""
        await lifecycle_support.wait_for_status(
            self.lifecycle,
            request_id,
            lambda s: s.status is PromptStatus.DEPLOYING_STAGING and "waiting for" in s.step,
            within=60,
        )

    # -- what GitHub holds ------------------------------------------------------------------

    @property
    def bare(self) -> Path:
        return self.repository.bare.path

    def git(self, *args: str) -> str:
        """git in GitHub's bare repository of acme/storefront."""
        return lifecycle_support.git(self.bare, *args)

    def config(self, branch: str) -> dict[str, Any]:
        return json.loads(self.git("show", f"{branch}:config.json"))  # type: ignore[no-any-return]

    def tree(self, branch: str) -> str:
        return self.git("rev-parse", f"{branch}^{{tree}}")

    def head(self, branch: str) -> str:
        return self.git("rev-parse", branch)

    def branches(self) -> list[str]:
        listing = self.git("for-each-ref", "--format=%(refname:short)", "refs/heads")
        return sorted(listing.splitlines())

    def pulls(self) -> list[PullRequest]:
        name = self.repository.full_name
        return [pull for (repo, _), pull in sorted(self.state.pulls.items()) if repo == name]

    def answers(self, method: str, path_suffix: str) -> list[int]:
        """The statuses GitHub answered to the REST calls `method` on acme/storefront's
        `path_suffix` (after /repos/acme/storefront), in order."""
        path = f"/repos/{self.repository.full_name}{path_suffix}"
        return [status for m, p, status in self.stand_in.requests if (m, p) == (method, path)]

    def checks_read(self, sha: str) -> int:
        """How many times the check runs of commit `sha` were read."""
        return len(self.answers("GET", f"/commits/{sha}/check-runs"))

    def tokens_minted(self) -> int:
        """Installation tokens GitHub issued to the App (each a purchase by a client)."""
        return sum(1 for t in self.state.tokens.values() if t.kind == "installation")

    def deployments(self) -> list[tuple[str, str, list[str]]]:
        """Each GitHub deployment: its environment, commit and statuses in order."""
        return [
            (d.environment, d.sha, [s.state for s in d.statuses])
            for d in sorted(self.state.deployments.values(), key=lambda d: d.id)
            if d.repository == self.repository.full_name
        ]


async def github_shop(
    world: GitHubWorld,
    *,
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    task_queue: str,
    deploy_queue: str,
    workdir: Path,
    credential_keys: str,
    webhooks_process: WebhooksProcess,
) -> GitHubShop:
    """The sample storefront pushed to the stand-in's acme/storefront, the project's repo_url
    its clone URL, and its `github` connector made with the App's credentials and scoped to
    the project, tested as an operator does it. `credential_keys`: the key ring the workers
    and the webhooks process read the credentials with."""
    shop = await make_shop(sessions, workdir)
    lifecycle_support.git(
        shop.project.repo_url,
        "push",
        "--quiet",
        "--force",
        str(world.repository.bare.path),
        "main:main",
    )
    async with sessions() as session:
        project = await session.get(Project, shop.project.id)
        assert project is not None
        project.repo_url = world.hub.clone_url(world.repository)
        session.add(project)
        await session.commit()
        await session.refresh(project)
        shop.project = project
    settings = test_settings(
        task_queue=task_queue,
        deploy_task_queue=deploy_queue,
        workspace_dir=workdir / "workspace",
    ).model_copy(
        update={
            "credential_keys": SecretStr(credential_keys),
            "credential_key_id": "k1",
            "repository_cache_dir": workdir / "cache",
        }
    )
    store, connections = connector_clients(settings, sessions)
    service = ConnectorService(sessions, store, connections)
    created = await service.create(
        tenant_id=shop.tenant.id,
        kind=ConnectorKind.GITHUB,
        name="Storefront on GitHub",
        config=world.connector_config(),
        credentials=world.app_credentials(),
        project_id=shop.project.id,
    )
    tested = await service.test(created.id)
    assert tested.status.value == "active", tested.last_error
    return GitHubShop(
        shop, world, settings, created.id, client, sessions, lifecycle, webhooks_process, workdir
    )
