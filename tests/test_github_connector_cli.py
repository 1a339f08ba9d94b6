"""`changeflow connector create --kind github`, run as a person runs it against the GitHub
stand-in: the README's commands as written (an App with its key file, a fine-grained token),
bad input refused as InvalidConnectorConfig with nothing written, and no secret in any output."""

import re
import shlex
from pathlib import Path

import pytest

from activities.credentials import KeyRing
from activities.github_client import check_connector
from cli.connectors import _kind, github_credentials
from cli.tenancy import Refused
from models.db import SessionFactory
from tests.cli_support import ok, refused
from tests.github_support import GitHubWorld
from tests.test_readme_operations import code_blocks, section

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEYS = f"k1:{KeyRing.new_key()}"


def readme_commands() -> list[tuple[dict[str, str], list[str]]]:
    """The section's commands: (variables set before it, changeflow's arguments)."""
    [block] = code_blocks(section("### Connect a GitHub repository"), "sh")
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        variables = {}
        while re.fullmatch(r"[A-Z_]+=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            variables[name] = value
        assert words[0] == "changeflow"
        commands.append((variables, words[1:]))
    return commands


def as_here(words: list[str], world: GitHubWorld, key_file: Path) -> list[str]:
    """The README's example values replaced by the stand-in's."""
    values = {
        "123456": str(world.app.id),
        "7890123": str(world.installation.id),
        "changeflow-app.pem": str(key_file),
    }
    return [values.get(word, word) for word in words]


async def test_the_readmes_commands_connect_the_repository_by_app_and_by_token(
    sessions: SessionFactory, env: dict[str, str], github_world: GitHubWorld, tmp_path: Path
) -> None:
    world = github_world
    env = {**env, "GITHUB_API_URL": world.hub.url, "CHANGEFLOW_CREDENTIAL_KEYS": KEYS}
    await ok(env, "tenant", "create", "Acme", "--slug", "acme")
    # The project the App's connector is scoped to (--project storefront).
    repo = world.hub.clone_url(world.repository)
    await ok(env, "project", "create", "Storefront", "-t", "acme", "--repo", repo)
    key_file = tmp_path / "changeflow-app.pem"
    key_file.write_text(world.app.private_key_pem)
    token = world.hub.state.create_personal_token("alice", ["acme/storefront"]).value
    secrets = {
        "the-apps-webhook-secret": world.app.webhook_secret,
        "github_pat_example": token,
    }
    [by_app, by_token] = readme_commands()
    outputs, policies = [], []
    for variables, words in (by_app, by_token):
        here = {name: secrets.get(value, value) for name, value in variables.items()}
        ran = await ok({**env, **here}, *as_here(words, world, key_file), "--json")
        assert ran.json["status"] == "active", ran.out
        assert ran.json["kind"] == "github"
        assert ran.json["config"]["default_branch"] == "main"
        policies.append(ran.json["config"].get("verification"))
        outputs.append(ran.out + ran.err)
    strict = {"time_limit_s": 1800.0, "on_silence": "fail"}
    assert policies == [{"staging": strict, "production": strict}, None]
    listed = (await ok(env, "connector", "list", "-t", "acme", "--json")).json
    assert sorted(c["name"] for c in listed) == ["GitHub", "Storefront (token)"]
    for output in outputs:
        assert token not in output and "PRIVATE KEY" not in output
        assert world.app.webhook_secret not in output


async def test_bad_github_input_is_refused_and_writes_nothing(
    sessions: SessionFactory, env: dict[str, str], github_world: GitHubWorld
) -> None:
    world = github_world
    env = {**env, "GITHUB_API_URL": world.hub.url, "CHANGEFLOW_CREDENTIAL_KEYS": KEYS}
    await ok(env, "tenant", "create", "Acme", "--slug", "acme")
    github = ["connector", "create", "-t", "acme", "--kind", "github"]
    # No credentials at all (and no terminal to ask at).
    error = await refused(env, "InvalidConnectorConfig", *github, "--repository", "acme/storefront")
    assert "GITHUB_TOKEN" in error["message"]
    with_token = {**env, "GITHUB_TOKEN": "github_pat_whatever"}
    error = await refused(
        with_token, "InvalidConnectorConfig", *github, "--repository", "storefront"
    )
    assert "owner/name" in error["message"]
    assert (await ok(env, "connector", "list", "-t", "acme", "--json")).json == []


async def test_the_app_options_are_read_with_typed_refusals(tmp_path: Path) -> None:
    """The command's reading of an App's options (in process: each refusal is the same
    `Refused` the command prints)."""
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text(
        "-----BEGIN RSA PRIVATE KEY-----\nnot base64\n-----END RSA PRIVATE KEY-----\n"
    )
    with pytest.raises(Refused) as no_key:
        github_credentials({}, False, app_id="12", installation_id="34", private_key_file=None)
    assert "--private-key-file" in str(no_key.value)
    with pytest.raises(Refused) as unreadable:
        github_credentials(
            {}, False, app_id="12", installation_id="34", private_key_file=tmp_path / "none"
        )
    assert "cannot read" in str(unreadable.value)
    read = github_credentials(
        {"GITHUB_WEBHOOK_SECRET": "s"}, False, app_id="12", installation_id="34",
        private_key_file=not_a_key,
    )  # fmt: skip
    assert read["webhook_secret"] == "s"
    config = {"repository": "acme/storefront", "api_url": "https://api.github.com"}
    assert check_connector(config, read) == [
        "private_key does not parse as an unencrypted PEM private key"
    ]
    assert check_connector(config, {**read, "app_id": "twelve"}) == [
        "app_id must be a number",
        "private_key does not parse as an unencrypted PEM private key",
    ]
    assert check_connector({**config, "api_url": "https://x:y@ghe.example"}, {"token": "t"}) == [
        "api_url must be an http(s) URL without credentials"
    ]
    assert check_connector(config, {"app_id": "12"}) == [
        "a GitHub App needs installation_id, private_key too"
    ]
    with pytest.raises(Refused) as kind:
        _kind("gitlab")
    assert kind.value.error_type == "InvalidConnectorConfig"
