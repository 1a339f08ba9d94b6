"""The GitHub stand-in as the product meets it: one App installed on one repository holding the
sample storefront, a `github` connector made with the App's credentials (encrypted like any
connector's), and helpers that push a request's branch the way the git layer will.

The fixture `github_world` (tests/conftest.py) yields a `GitHubWorld`; use it from any test."""

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from activities.connectors import Connections, ConnectorService
from activities.credentials import CredentialStore, KeyRing
from activities.github_client import GitHubAccess, GitHubClients, GitHubRepository
from activities.github_target import GitHubDeployTarget
from models.db import SessionFactory
from models.projects import Connector, ConnectorKind
from models.tenancy import Tenant
from scripts.github_stand_in import GitHubStandIn, github_stand_in
from scripts.github_stand_in.records import App, Installation, Repository
from tests.factories import make_tenant

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
