"""What a command talks to: the database (DATABASE_URL, or the embedded one under the data folder)
and Temporal (TEMPORAL_ADDRESS, or the dev server `make dev` runs), connected only when used."""

import asyncio
from types import TracebackType
from typing import Any

from temporalio.client import Client

from activities.ledger import Ledger
from activities.notifications import TenantWebhooks
from client.connection import connect
from client.lifecycle import LifecycleClient
from infra.settings import ConfigurationError, Settings
from models.db import SessionFactory, create_engine, session_factory
from models.migrate import upgrade
from scripts.decision_signer import development_signer
from workers.devstack import check_database, port_open, start_postgres


class Stack:
    """Opened lazily: a tenancy command never needs Temporal, `request show` never the database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._postgres: Any = None
        self._engine: Any = None
        self._sessions: SessionFactory | None = None
        self._ledger: Ledger | None = None
        self._client: Client | None = None

    async def sessions(self) -> SessionFactory:
        if self._sessions is None:
            if self.settings.database_url is not None:
                url = self.settings.database_url.get_secret_value()
                await check_database(url)
            else:
                # Joins the server `make dev` runs on the same data folder, or starts it; the
                # embedded database is migrated as the embedded worker does.
                self._postgres, url = await asyncio.to_thread(
                    start_postgres, self.settings.data_dir
                )
                await asyncio.to_thread(upgrade, url)
            self._engine = create_engine(url, pool_size=2)
            self._sessions = session_factory(self._engine)
        return self._sessions

    async def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(await self.sessions(), pool_size=2)
        return self._ledger

    async def webhooks(self) -> TenantWebhooks:
        """Tenants' notification webhooks, their secrets under the settings' key ring."""
        from activities.connectors import ConnectorService
        from workers.registry import connector_clients

        sessions = await self.sessions()
        store, connections = connector_clients(self.settings, sessions)
        return TenantWebhooks(sessions, ConnectorService(sessions, store, connections))

    async def client(self) -> Client:
        if self._client is None:
            settings = self.settings
            if settings.temporal_address is None:
                address = f"127.0.0.1:{settings.dev_temporal_port}"
                if not port_open("127.0.0.1", settings.dev_temporal_port):
                    raise ConfigurationError(
                        f"no Temporal server: TEMPORAL_ADDRESS is not set and nothing answers on "
                        f"{address}; start `make dev` in another shell or set TEMPORAL_ADDRESS"
                    )
                settings = settings.model_copy(update={"temporal_address": address})
            # A command is no worker: it serves no metrics endpoint.
            self._client = await connect(settings.model_copy(update={"metrics_port": None}))
        return self._client

    async def lifecycle(self) -> LifecycleClient:
        # Without --token, a decision is signed by the development signer when the workers
        # trust it; otherwise it carries the identity service's token it was given.
        return LifecycleClient(
            await self.client(),
            task_queue=self.settings.task_queue,
            deploy_task_queue=self.settings.deploy_task_queue,
            signer=development_signer(self.settings),
        )

    async def __aenter__(self) -> "Stack":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ledger is not None:
            await self._ledger.close()
        if self._engine is not None:
            await self._engine.dispose()
        if self._postgres is not None:
            # Stops the embedded server only when no other process (make dev) uses it.
            await asyncio.to_thread(self._postgres.cleanup)
