"""Projects on an ssh remote, for real: `ssh://` and scp-like `git@host:path` addresses served by
an ssh server that runs git's own upload-pack and receive-pack (tests/ssh_stand_in.py), a
deploy key in the project's git connector, and the server's host key checked against the
worker's known_hosts (libgit2 reads `<home>/.ssh/known_hosts`; the tests point its home at a
folder of their own)."""

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pygit2
import pytest
import pytest_asyncio
from temporalio.client import Client

from activities.change_engine import RepositoryError
from activities.connectors import ConnectorService
from activities.deploy_target import GitDeployTarget
from activities.git_store import release_ref, resolve_commit
from activities.remote_repository import RemoteUntrusted, Repositories
from client.lifecycle import LifecycleClient
from infra.settings import Settings
from models import Connector, PromptStatus
from models.db import SessionFactory
from models.projects import ConnectorKind, ConnectorStatus
from tests.lifecycle_support import git, make_shop, submit
from tests.remote_support import RemoteShop, _seed, remote_config, remote_settings
from tests.remote_support import tree as tree_of
from tests.ssh_stand_in import SshGitServer, ssh_git_server
from tests.workers import running_workers, test_settings
from workers.registry import connector_clients

pytestmark = pytest.mark.asyncio(loop_scope="session")

REPOSITORY = "acme/storefront.git"


@dataclass
class SshWorld:
    server: SshGitServer
    bare: Path  # the served repository, read with git
    known_hosts: Path  # the worker's (libgit2's) known_hosts
    deploy_key: asyncssh.SSHKey
    settings: Settings

    @property
    def private_key(self) -> str:
        return self.deploy_key.export_private_key("openssh").decode()


@contextlib.contextmanager
def libgit2_home(home: Path) -> Iterator[None]:
    """libgit2 looks for `.ssh/known_hosts` in this folder (the worker user's home)."""
    before = pygit2.settings.homedir or ""
    pygit2.settings.homedir = str(home)
    try:
        yield
    finally:
        pygit2.settings.homedir = before


async def served(
    tmp_path: Path, queues: tuple[str, str], host: str, port: int
) -> AsyncIterator[SshWorld]:
    root = tmp_path / "ssh-root"
    bare = root / REPOSITORY
    bare.parent.mkdir(parents=True)
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(bare))
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    deploy_key = asyncssh.generate_private_key("ssh-ed25519")
    base = test_settings(
        task_queue=queues[0], deploy_task_queue=queues[1], workspace_dir=tmp_path / "workspace"
    )
    settings = remote_settings(base, tmp_path / "cache")
    async with ssh_git_server(root, host, port) as server:
        server.authorize(deploy_key)
        known_hosts = home / ".ssh" / "known_hosts"
        known_hosts.write_text(server.known_hosts_line())
        with libgit2_home(home):
            yield SshWorld(server, bare, known_hosts, deploy_key, settings)


@pytest_asyncio.fixture(loop_scope="session")
async def ssh(tmp_path: Path, task_queue: str, deploy_queue: str) -> AsyncIterator[SshWorld]:
    async for world in served(tmp_path, (task_queue, deploy_queue), "127.0.0.1", 0):
        yield world


@pytest_asyncio.fixture(loop_scope="session")
async def ssh_on_port_22(
    tmp_path: Path, task_queue: str, deploy_queue: str
) -> AsyncIterator[SshWorld]:
    """Port 22, as scp-like addresses mean, on a loopback address of its own (127.0.0.0/8 is
    all loopback), so no other server on this machine is in the way."""
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    async for world in served(tmp_path, (task_queue, deploy_queue), host, 22):
        yield world


async def ssh_shop(
    sessions: SessionFactory, tmp_path: Path, world: SshWorld, url: str, key: str | None = None
) -> tuple[RemoteShop, Connector]:
    """A project on the ssh server and its git connector holding a deploy key, tested as
    `changeflow connector git` tests it (by listing the remote's branches)."""
    shop = await make_shop(sessions, tmp_path)
    await _seed(sessions, shop, world.bare, url)
    store, connections = connector_clients(world.settings, sessions)
    service = ConnectorService(sessions, store, connections)
    connector = await service.create(
        tenant_id=shop.tenant.id,
        kind=ConnectorKind.GIT,
        config={},
        credentials={"ssh_private_key": key or world.private_key},
        project_id=shop.project.id,
    )
    return RemoteShop(shop, world.bare, url), await service.test(connector.id)


def repositories(sessions: SessionFactory, world: SshWorld) -> Repositories:
    store, _ = connector_clients(world.settings, sessions)
    return Repositories(world.settings.resolved_repository_cache_dir, sessions, store)


async def fetched_and_pushed(sessions: SessionFactory, world: SshWorld, remote: RemoteShop) -> None:
    """The mirror is fetched over ssh and a release pushed back by compare-and-swap."""
    head = git(world.bare, "rev-parse", "main")
    mirror = await repositories(sessions, world).local(remote.shop.project)
    assert await resolve_commit(mirror, "main") == head
    deployment = uuid.uuid4()
    released = await GitDeployTarget(world.settings.resolved_workspace_dir).release(
        repo=mirror, environment="staging", commit_sha=head, deployment_id=deployment
    )
    assert released.commit_sha == head
    assert git(world.bare, "rev-parse", "env/staging") == head
    assert git(world.bare, "rev-parse", release_ref(deployment)) == head


async def test_an_ssh_url_project_fetches_and_pushes_with_its_deploy_key(
    sessions: SessionFactory, tmp_path: Path, ssh: SshWorld
) -> None:
    remote, connector = await ssh_shop(sessions, tmp_path, ssh, ssh.server.ssh_url(REPOSITORY))

    assert connector.status is ConnectorStatus.ACTIVE, connector.last_error
    await fetched_and_pushed(sessions, ssh, remote)
    # git's own programs served it, on the path the URL names, to the `git` user only.
    assert set(ssh.server.commands) == {
        f"git-upload-pack '/{REPOSITORY}'",
        f"git-receive-pack '/{REPOSITORY}'",
    }
    assert set(ssh.server.logins) == {"git"}


async def test_an_scp_like_address_project_fetches_and_pushes_on_port_22(
    sessions: SessionFactory, tmp_path: Path, ssh_on_port_22: SshWorld
) -> None:
    world = ssh_on_port_22
    remote, connector = await ssh_shop(sessions, tmp_path, world, world.server.scp_like(REPOSITORY))
    assert remote.url == f"git@{world.server.host}:{REPOSITORY}"

    assert connector.status is ConnectorStatus.ACTIVE, connector.last_error
    await fetched_and_pushed(sessions, world, remote)
    # The scp-like path is relative to the login's home: the server maps it to the same place.
    assert f"git-receive-pack '{REPOSITORY}'" in world.server.commands


@pytest.mark.parametrize("known", ["nothing", "another key"])
async def test_a_host_key_not_in_known_hosts_is_refused_before_logging_in(
    sessions: SessionFactory, tmp_path: Path, ssh: SshWorld, known: str
) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519")
    ssh.known_hosts.write_text("" if known == "nothing" else ssh.server.known_hosts_line(impostor))
    remote, connector = await ssh_shop(sessions, tmp_path, ssh, ssh.server.ssh_url(REPOSITORY))

    # The connector's own test (listing the branches) already failed, and says why.
    assert connector.status is ConnectorStatus.ERROR
    assert "ssh host key of" in (connector.last_error or ""), connector.last_error
    with pytest.raises(RemoteUntrusted, match="known_hosts") as refused:
        await repositories(sessions, ssh).local(remote.shop.project)
    assert "PRIVATE KEY" not in str(refused.value)
    # Nothing was logged in, nothing run, nothing pushed.
    assert ssh.server.logins == [] and ssh.server.commands == []
    assert git(ssh.bare, "for-each-ref", "--format=%(refname)") == "refs/heads/main"


async def test_a_deploy_key_the_server_does_not_know_is_refused_without_echoing_it(
    sessions: SessionFactory, tmp_path: Path, ssh: SshWorld
) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh")
    remote, connector = await ssh_shop(
        sessions, tmp_path, ssh, ssh.server.ssh_url(REPOSITORY), key=stranger.decode()
    )

    assert connector.status is ConnectorStatus.ERROR
    assert "refused the project's git credentials" in (connector.last_error or "")
    with pytest.raises(RepositoryError) as refused:
        await repositories(sessions, ssh).local(remote.shop.project)
    assert "refused the project's git credentials" in str(refused.value)
    assert "PRIVATE KEY" not in str(refused.value)
    assert ssh.server.commands == []


async def test_a_request_on_an_ssh_remote_ships_to_its_branches_there(
    client: Client,
    sessions: SessionFactory,
    lifecycle: LifecycleClient,
    tmp_path: Path,
    ssh: SshWorld,
) -> None:
    remote, _ = await ssh_shop(sessions, tmp_path, ssh, ssh.server.ssh_url(REPOSITORY))
    async with running_workers(client, sessions, ssh.settings):
        request_id = await submit(lifecycle, remote.shop, "set theme to dark")
        async with asyncio.timeout(90):
            result = await lifecycle.wait_for_outcome(request_id)

    assert result.status is PromptStatus.COMPLETED, result.reason
    assert remote_config(remote, "env/production")["theme"] == "dark"
    assert git(ssh.bare, "rev-parse", "main") == result.commit_sha
    assert tree_of(remote, "main") == tree_of(remote, "env/production")
