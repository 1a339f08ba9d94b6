"""Projects whose repository is a git remote, for the tests of issue 19 part 1: the sample
storefront pushed to a bare repository served over smart HTTP by the GitHub stand-in (git's
own `git http-backend`, Basic auth with a token; used through git alone, as a plain remote)
or reached as a `file://` URL; its git connector; and readers of the remote's branches."""

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from activities.connectors import ConnectorService
from infra.codec import EncryptionCodec
from infra.settings import Settings
from models import Project
from models.db import SessionFactory
from models.projects import ConnectorKind
from scripts.github_stand_in.server import GitHubStandIn
from tests.commerce_support import key_spec
from tests.lifecycle_support import PUSHER, Shop, git, make_shop
from workers.registry import connector_clients


@dataclass
class RemoteShop:
    shop: Shop
    bare: Path  # the remote's repository on disk, read with git
    url: str
    token: str | None = None


def remote_settings(settings: Settings, cache: Path) -> Settings:
    """A worker's settings with a key ring for connector credentials and its own cache."""
    from pydantic import SecretStr

    return settings.model_copy(
        update={
            "credential_keys": settings.credential_keys or SecretStr(key_spec("k1")),
            "repository_cache_dir": cache,
        }
    )


async def _seed(sessions: SessionFactory, shop: Shop, bare: Path, url: str) -> None:
    """The sample storefront's history pushed to `bare`; the project points at `url`."""
    git(shop.project.repo_url, "push", "--quiet", "--force", str(bare), "main:main")
    async with sessions() as session:
        project = await session.get(Project, shop.project.id)
        assert project is not None
        project.repo_url = url
        session.add(project)
        await session.commit()
        await session.refresh(project)
        shop.project = project


async def file_remote_shop(sessions: SessionFactory, tmp_path: Path, **options: Any) -> RemoteShop:
    shop = await make_shop(sessions, tmp_path, **options)
    bare = tmp_path / f"remote-{uuid.uuid4().hex[:6]}.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(bare))
    url = bare.resolve().as_uri()
    await _seed(sessions, shop, bare, url)
    return RemoteShop(shop, bare, url)


async def http_remote_shop(
    sessions: SessionFactory,
    tmp_path: Path,
    hub: GitHubStandIn,
    settings: Settings,
    **options: Any,
) -> RemoteShop:
    """A project on the stand-in over smart HTTP, with a git connector holding a token."""
    shop = await make_shop(sessions, tmp_path, **options)
    name = f"storefront-{uuid.uuid4().hex[:6]}"
    repository = hub.create_repository("acme", name)
    token = hub.state.create_personal_token("changeflow-bot", [repository.full_name]).value
    await _seed(sessions, shop, repository.bare.path, hub.clone_url(repository))
    await connect_git(sessions, settings, shop, {"token": token})
    return RemoteShop(shop, repository.bare.path, hub.clone_url(repository), token)


async def connect_git(
    sessions: SessionFactory, settings: Settings, shop: Shop, credentials: dict[str, str]
) -> None:
    store, connections = connector_clients(settings, sessions)
    await ConnectorService(sessions, store, connections).create(
        tenant_id=shop.tenant.id,
        kind=ConnectorKind.GIT,
        config={},
        credentials=credentials,
        project_id=shop.project.id,
    )


def remote_config(remote: RemoteShop, branch: str) -> dict[str, Any]:
    return json.loads(git(remote.bare, "show", f"{branch}:config.json"))  # type: ignore[no-any-return]


def remote_branches(remote: RemoteShop) -> list[str]:
    listing = git(remote.bare, "for-each-ref", "--format=%(refname:short)", "refs/heads")
    return sorted(listing.splitlines())


def tree(remote: RemoteShop, branch: str) -> str:
    return git(remote.bare, "rev-parse", f"{branch}^{{tree}}")


def person_pushes(remote: RemoteShop, **changes: object) -> str:
    """Someone outside changeflow pushes an edit of config.json onto the remote's main."""
    import os

    config = remote_config(remote, "main")
    config.update(changes)
    env = {**os.environ, **PUSHER, "GIT_DIR": str(remote.bare)}

    def plumb(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["git", *args], input=stdin, env=env, check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    parent = plumb("rev-parse", "main")
    blob = plumb("hash-object", "-w", "--stdin", stdin=json.dumps(config, indent=2) + "\n")
    listing = plumb("ls-tree", "main")
    lines = [
        f"100644 blob {blob}\tconfig.json" if line.endswith("\tconfig.json") else line
        for line in listing.splitlines()
    ]
    new_tree = plumb("mktree", stdin="\n".join(lines) + "\n")
    commit = plumb("commit-tree", new_tree, "-p", parent, "-m", "A person's edit")
    plumb("update-ref", "refs/heads/main", commit, parent)
    return commit


async def history_text(client: Client, workflow_id: str, settings: Settings) -> str:
    """Everything a workflow's history holds, its payloads decrypted: what anyone with the
    payload keys (the Web UI through the codec server) can read."""
    from infra.codec import payload_key_ring

    codec = EncryptionCodec(payload_key_ring(settings))
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    parts: list[str] = []

    def walk(message: Message) -> None:
        if isinstance(message, Payload):
            try:
                parts.append(codec.decrypt(message).data.decode(errors="replace"))
            except Exception:
                parts.append(message.data.decode(errors="replace"))
            return
        for field, value in message.ListFields():
            if field.type == field.TYPE_MESSAGE:
                items = value.values() if hasattr(value, "values") else value
                for item in items if field.is_repeated else [value]:
                    walk(item)
            elif field.type == field.TYPE_STRING:
                parts.extend(value if field.is_repeated else [value])

    for event in history.events:
        walk(event)
    return "\n".join(parts)
