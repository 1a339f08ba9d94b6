"""Connector operations: create, test (a real call to the outside system), enable, disable,
rotate credentials, reconfigure. Statuses move by models.transitions; a failed test leaves the
connector in `error` with a readable last_error. Credentials are handed in by the operator's
code, never through Temporal; workflows reach a connector only by id (ConnectorActivities)."""

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
from temporalio import activity

from activities.change_engine import RepositoryError
from activities.credentials import CredentialError, CredentialStore
from activities.github_client import (
    APP_FIELDS,
    GITHUB_API_URL,
    TOKEN_FIELDS,
    GitHubAccess,
    GitHubClients,
    GitHubError,
    GitHubRepository,
    GitHubUnavailable,
    check_connector,
    process_clients,
)
from activities.shopify import (
    Bucket,
    ShopifyClient,
    ShopifyError,
    ShopifyUnavailable,
    client_credentials_token,
)
from activities.webhook_client import (
    WEBHOOK_TIMEOUT,
    WebhookClient,
    WebhookRejected,
    WebhookUnavailable,
)
from models.base import utcnow
from models.db import SessionFactory
from models.projects import Connector, ConnectorKind, ConnectorStatus, Project
from models.tenancy import Tenant
from models.transitions import IllegalTransition, ensure_transition
from workflows.contracts.commerce import ConnectorFailure
from workflows.contracts.errors import ErrorType, refused
from workflows.contracts.notifications import NotificationEvent, TenantNotification

# What each kind needs: non-secret config keys and secret credential fields.
REQUIRED_CONFIG = {
    ConnectorKind.SHOPIFY: ("shop_url",),
    ConnectorKind.WEBHOOK: ("url",),
    ConnectorKind.GITHUB: ("repository", "api_url"),
    ConnectorKind.GIT: (),  # the URL is the project's repository
}
# Any one of these sets of secret fields will do: Shopify's access token (a custom app's, or an
# offline token), or an app's client id and secret, exchanged for 24-hour tokens as they expire.
# A tenant's notification webhook: the secret its events are signed with.
# A project's git remote: a token (or a user name and password) for https, a deploy key for ssh.
CREDENTIAL_SETS = {
    ConnectorKind.SHOPIFY: (("access_token",), ("client_id", "client_secret")),
    ConnectorKind.WEBHOOK: (("signing_secret",),),
    # A GitHub App installation, or a fine-grained personal access token.
    ConnectorKind.GITHUB: (APP_FIELDS, TOKEN_FIELDS),
    ConnectorKind.GIT: (("token",), ("username", "password"), ("ssh_private_key",)),
}
# The config key holding each kind's URL, and what a valid one looks like.
URL_FIELDS = {
    ConnectorKind.SHOPIFY: ("shop_url", "https://<shop>.myshopify.com"),
    ConnectorKind.WEBHOOK: ("url", "an http:// or https:// URL"),
    ConnectorKind.GITHUB: ("api_url", f"an http:// or https:// URL ({GITHUB_API_URL})"),
}
# A token this close to its expiry is replaced before the call, so no call starts with a token
# that lapses mid-sync.
REFRESH_MARGIN = timedelta(minutes=10)
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_KEEP = object()


class ConnectorError(Exception):
    """A refused connector operation; `error_type` names the rule."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class Connections:
    """Opens a client to a connector's outside system with its decrypted credentials."""

    def __init__(
        self, store: CredentialStore, *, api_version: str, github: GitHubClients | None = None
    ) -> None:
        self._store = store
        self._api_version = api_version
        self._buckets: dict[uuid.UUID, Bucket] = {}
        # The process's GitHub token cache and write turns, shared by every github connector.
        self.github_clients = github or process_clients()

    @contextlib.asynccontextmanager
    async def shopify(
        self, connector: Connector, **client_options: Any
    ) -> AsyncIterator[ShopifyClient]:
        if connector.kind is not ConnectorKind.SHOPIFY:
            raise ConnectorError(
                ErrorType.INVALID_CONNECTOR_CONFIG,
                f"connector {connector.id} is a {connector.kind.value} connector, not shopify",
            )
        try:
            secrets = await self._store.read_expiring(connector)
        except CredentialError as err:
            raise ConnectorError(err.error_type, str(err)) from None
        shop_url = str(connector.config["shop_url"])
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
            yield ShopifyClient(
                http,
                shop_url=shop_url,
                access_token=await self._access_token(connector, secrets, http, shop_url),
                api_version=self._api_version,
                bucket=self._buckets.setdefault(connector.id, Bucket()),
                **client_options,
            )

    @contextlib.asynccontextmanager
    async def webhook(self, connector: Connector) -> AsyncIterator[WebhookClient]:
        """A client that posts events to a notification webhook, signed with its secret."""
        if connector.kind is not ConnectorKind.WEBHOOK:
            raise ConnectorError(
                ErrorType.INVALID_CONNECTOR_CONFIG,
                f"connector {connector.id} is a {connector.kind.value} connector, not webhook",
            )
        try:
            secrets = await self._store.read(connector)
        except CredentialError as err:
            raise ConnectorError(err.error_type, str(err)) from None
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT) as http:
            yield WebhookClient(
                http, url=str(connector.config["url"]), secret=secrets["signing_secret"]
            )

    @contextlib.asynccontextmanager
    async def github(self, connector: Connector) -> AsyncIterator[GitHubRepository]:
        """The connector's repository on GitHub, with its decrypted credentials."""
        if connector.kind is not ConnectorKind.GITHUB:
            raise ConnectorError(
                ErrorType.INVALID_CONNECTOR_CONFIG,
                f"connector {connector.id} is a {connector.kind.value} connector, not github",
            )
        try:
            secrets = await self._store.read(connector)
        except CredentialError as err:
            raise ConnectorError(err.error_type, str(err)) from None
        access = GitHubAccess.from_connector(connector.config, secrets)
        async with self.github_clients.repository(access) as repository:
            yield repository

    async def _access_token(
        self,
        connector: Connector,
        secrets: dict[str, tuple[str, datetime | None]],
        http: httpx.AsyncClient,
        shop_url: str,
    ) -> str:
        """The stored token while it is good; otherwise a new one from the app's client
        credentials, stored encrypted with its expiry before it is used. Two workers refreshing
        at once each store a valid token; the last one stored is kept."""
        token, expires_at = secrets.get("access_token", ("", None))
        if "client_id" not in secrets or "client_secret" not in secrets:
            return token
        if token and expires_at is not None and expires_at - utcnow() > REFRESH_MARGIN:
            return token
        issued = await client_credentials_token(
            http,
            shop_url=shop_url,
            client_id=secrets["client_id"][0],
            client_secret=secrets["client_secret"][0],
        )
        await self._store.replace(
            connector,
            {"access_token": issued.access_token},
            expires_at=utcnow() + timedelta(seconds=issued.expires_in_seconds),
        )
        return issued.access_token


class ConnectorService:
    def __init__(self, sessions: SessionFactory, store: CredentialStore, connections: Connections):
        self._sessions = sessions
        self._store = store
        self._connections = connections

    async def get(self, connector_id: uuid.UUID) -> Connector:
        async with self._sessions() as session:
            connector = await session.get(Connector, connector_id)
        if connector is None:
            raise ConnectorError(ErrorType.CONNECTOR_NOT_FOUND, f"no connector {connector_id}")
        return connector

    async def create(
        self,
        *,
        tenant_id: uuid.UUID,
        kind: ConnectorKind,
        config: dict[str, Any],
        credentials: dict[str, str],
        name: str = "",
        project_id: uuid.UUID | None = None,
        sync_interval_seconds: int = 900,
    ) -> Connector:
        """A pending connector with its credentials encrypted, in one transaction."""
        _check_fields(kind, config, credentials)
        async with self._sessions() as session, session.begin():
            if await session.get(Tenant, tenant_id) is None:
                raise ConnectorError(ErrorType.UNKNOWN_TENANT, f"no tenant {tenant_id}")
            if project_id is not None:
                project = await session.get(Project, project_id)
                if project is None or project.tenant_id != tenant_id:
                    raise ConnectorError(
                        ErrorType.UNKNOWN_PROJECT, f"tenant {tenant_id} has no project {project_id}"
                    )
            connector = Connector(
                tenant_id=tenant_id,
                project_id=project_id,
                kind=kind,
                name=name or kind.value,
                config=config,
                sync_interval_seconds=sync_interval_seconds,
                secret_ref="connector_credentials",
            )
            session.add(connector)
            await session.flush()
            await self._store.write(session, connector, credentials)
        return connector

    async def test(self, connector_id: uuid.UUID) -> Connector:
        """Call the outside system with the stored credentials. Success makes a pending or
        failed connector active (and records what the shop says of itself); a refusal leaves
        it in error with the reason. A disabled connector is tested but stays disabled."""
        connector = await self.get(connector_id)
        if connector.kind is ConnectorKind.WEBHOOK:
            return await self._ping(connector)
        if connector.kind is ConnectorKind.GITHUB:
            return await self._test_github(connector)
        if connector.kind is ConnectorKind.GIT:
            return await self._list_branches(connector)
        try:
            async with self._connections.shopify(connector) as shop:
                about = await shop.shop()
        except (ShopifyError, ConnectorError) as err:
            return await self._set_status(connector_id, ConnectorStatus.ERROR, last_error=str(err))
        except ShopifyUnavailable as err:
            # The shop is down, not the credentials wrong: recorded, the status unchanged.
            return await self._set_status(connector_id, None, last_error=str(err))
        facts = {
            "shop_name": about.get("name"),
            "timezone": about.get("ianaTimezone"),
            "currency": about.get("currencyCode"),
        }
        return await self._set_status(
            connector_id, ConnectorStatus.ACTIVE, last_error=None, config_update=facts
        )

    async def _list_branches(self, connector: Connector) -> Connector:
        """A git connector's test: the project's remote lists its branches with the
        credentials (a refusal says why; the secrets are never in it)."""
        # Here, not at the top: git (pygit2) loads only for a git connector, not for every
        # `changeflow connector` command.
        from activities.remote_repository import (
            RemoteUnavailable,
            RepositoryUrlInvalid,
            remote_branches,
        )

        async with self._sessions() as session:
            project = await session.get(Project, connector.project_id)
        if project is None:
            error = "a git connector belongs to a project: its repository is the remote"
            return await self._set_status(connector.id, ConnectorStatus.ERROR, last_error=error)
        try:
            branches = await remote_branches(project.repo_url, await self._store.read(connector))
        except (RepositoryError, RepositoryUrlInvalid, CredentialError) as err:
            return await self._set_status(connector.id, ConnectorStatus.ERROR, last_error=str(err))
        except RemoteUnavailable as err:
            return await self._set_status(connector.id, None, last_error=str(err))
        return await self._set_status(
            connector.id,
            ConnectorStatus.ACTIVE,
            last_error=None,
            config_update={"branches": len(branches)},
        )

    async def _ping(self, connector: Connector) -> Connector:
        """A webhook's test: one signed `ping` event. A receiver that is down (or answers 5xx)
        leaves the connector in error too: nothing else would tell the operator."""
        ping = TenantNotification(
            id=f"ping-{uuid.uuid4()}",
            type=NotificationEvent.PING,
            created_at=utcnow(),
            tenant_id=connector.tenant_id,
        )
        try:
            async with self._connections.webhook(connector) as hook:
                await hook.send(ping)
        except (WebhookRejected, WebhookUnavailable, ConnectorError) as err:
            return await self._set_status(connector.id, ConnectorStatus.ERROR, last_error=str(err))
        return await self._set_status(connector.id, ConnectorStatus.ACTIVE, last_error=None)

    async def _test_github(self, connector: Connector) -> Connector:
        """Read the repository with the credentials (an App buys an installation token): its
        default branch recorded, or the connector in error with GitHub's reason."""
        try:
            async with self._connections.github(connector) as repository:
                about = await repository.call(
                    f"GET /repos/{repository.owner}/{repository.name}",
                    lambda gh: gh.rest.repos.async_get(repository.owner, repository.name),
                )
        except (GitHubError, ConnectorError) as err:
            return await self._set_status(connector.id, ConnectorStatus.ERROR, last_error=str(err))
        except GitHubUnavailable as err:
            return await self._set_status(connector.id, None, last_error=str(err))
        facts = {"default_branch": about.parsed_data.default_branch}
        return await self._set_status(
            connector.id, ConnectorStatus.ACTIVE, last_error=None, config_update=facts
        )

    async def reconfigure(
        self, connector_id: uuid.UUID, *, config: dict[str, Any], credentials: dict[str, str]
    ) -> Connector:
        """New settings and credentials together, in one transaction; untested until `test`.
        A disabled connector comes back pending."""
        connector = await self.get(connector_id)
        config = {**connector.config, **config}
        _check_fields(connector.kind, config, credentials)
        async with self._sessions() as session, session.begin():
            row = await session.get(Connector, connector_id, with_for_update=True)
            if row is None:
                raise ConnectorError(ErrorType.CONNECTOR_NOT_FOUND, f"no connector {connector_id}")
            if row.status is ConnectorStatus.DISABLED:
                ensure_transition(row.status, ConnectorStatus.PENDING)
                row.status = ConnectorStatus.PENDING
            row.config = config
            row.last_error = None
            row.updated_at = utcnow()
            session.add(row)
            await self._store.write(session, row, credentials)
        return await self.get(connector_id)

    async def enable(self, connector_id: uuid.UUID) -> Connector:
        """A disabled connector back to pending, then tested."""
        connector = await self.get(connector_id)
        if connector.status is ConnectorStatus.DISABLED:
            await self._set_status(connector_id, ConnectorStatus.PENDING, last_error=None)
        return await self.test(connector_id)

    async def disable(self, connector_id: uuid.UUID) -> Connector:
        return await self._set_status(connector_id, ConnectorStatus.DISABLED)

    async def rotate(self, connector_id: uuid.UUID, credentials: dict[str, str]) -> Connector:
        """Replace the credentials (encrypted, atomically) and test the new ones."""
        connector = await self.get(connector_id)
        _check_fields(connector.kind, connector.config, credentials)
        async with self._sessions() as session, session.begin():
            await self._store.write(session, connector, credentials)
        if connector.status is ConnectorStatus.DISABLED:
            return await self.get(connector_id)
        return await self.test(connector_id)

    async def record_failure(self, connector_id: uuid.UUID, error: str) -> Connector:
        return await self._set_status(connector_id, ConnectorStatus.ERROR, last_error=error)

    async def _set_status(
        self,
        connector_id: uuid.UUID,
        status: ConnectorStatus | None,
        *,
        last_error: str | object | None = _KEEP,
        config_update: dict[str, Any] | None = None,
    ) -> Connector:
        async with self._sessions() as session, session.begin():
            connector = await session.get(Connector, connector_id, with_for_update=True)
            if connector is None:
                raise ConnectorError(ErrorType.CONNECTOR_NOT_FOUND, f"no connector {connector_id}")
            # A disabled connector stays disabled whatever a test or a sync says.
            outcome = status in (ConnectorStatus.ACTIVE, ConnectorStatus.ERROR)
            if status is not None and not (
                connector.status is ConnectorStatus.DISABLED and outcome
            ):
                try:
                    ensure_transition(connector.status, status)
                except IllegalTransition as err:
                    raise ConnectorError(ErrorType.ILLEGAL_TRANSITION, str(err)) from None
                connector.status = status
            if last_error is not _KEEP:
                connector.last_error = last_error  # type: ignore[assignment]
            if config_update:
                connector.config = {**connector.config, **config_update}
            connector.updated_at = utcnow()
            session.add(connector)
        return connector


def _check_fields(kind: ConnectorKind, config: dict[str, Any], credentials: dict[str, str]) -> None:
    if kind not in REQUIRED_CONFIG:
        raise ConnectorError(
            ErrorType.INVALID_CONNECTOR_CONFIG, f"{kind.value} connectors are not supported yet"
        )
    missing = [k for k in REQUIRED_CONFIG[kind] if not config.get(k)]
    sets = CREDENTIAL_SETS[kind]
    if not any(all(credentials.get(k) for k in fields) for fields in sets):
        missing.append(" or ".join(" and ".join(fields) for fields in sets))
    if missing:
        raise ConnectorError(
            ErrorType.INVALID_CONNECTOR_CONFIG,
            f"a {kind.value} connector needs {', '.join(missing)}",
        )
    if kind not in URL_FIELDS:
        return
    field, looks_like = URL_FIELDS[kind]
    if not str(config.get(field, "")).startswith(("https://", "http://")):
        raise ConnectorError(ErrorType.INVALID_CONNECTOR_CONFIG, f"{field} must be {looks_like}")
    problems = check_connector(config, credentials) if kind is ConnectorKind.GITHUB else []
    if problems:
        raise ConnectorError(
            ErrorType.INVALID_CONNECTOR_CONFIG, f"a {kind.value} connector: {'; '.join(problems)}"
        )


class ConnectorActivities:
    """What workflows may do to a connector: record a failure the workflow decided on."""

    def __init__(self, service: ConnectorService) -> None:
        self._service = service

    @activity.defn
    async def record_connector_failure(self, request: ConnectorFailure) -> None:
        try:
            await self._service.record_failure(request.connector_id, request.error)
        except ConnectorError as err:
            raise refused(err.error_type, str(err)) from None
