"""What a command talks to: the database (DATABASE_URL, or the embedded one under the data folder)
and Temporal (TEMPORAL_ADDRESS, or the dev server `make dev` runs), connected only when used.

Each part is imported when first used too, so a command pays only for what it talks to: a
tenancy command never loads the Temporal client, the ledger or the migrations.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlmodel.ext.asyncio.session import AsyncSession
    from temporalio.client import Client

    from activities.ledger import Ledger
    from activities.notifications import TenantWebhooks
    from client.lifecycle import LifecycleClient
    from infra.settings import Settings
    from models import Tenant
    from models.db import SessionFactory


class Stack:
    """Opened lazily: a tenancy command never needs Temporal, `request show` never the database."""

    def __init__(self, settings: "Settings") -> None:
        self.settings = settings
        self._postgres: Any = None
        self._engine: Any = None
        self._sessions: SessionFactory | None = None
        self._ledger: Ledger | None = None
        self._client: Client | None = None

    async def sessions(self) -> "SessionFactory":
        if self._sessions is None:
            from models.db import create_engine, session_factory

            if self.settings.database_url is not None:
                from workers.probes import check_database

                url = self.settings.database_url.get_secret_value()
                await check_database(url)
            else:
                from models.migrate import upgrade
                from workers.devstack import start_postgres

                # Joins the server `make dev` runs on the same data folder, or starts it; the
                # embedded database is migrated as the embedded worker does.
                self._postgres, url = await asyncio.to_thread(
                    start_postgres, self.settings.data_dir
                )
                await asyncio.to_thread(upgrade, url)
            self._engine = create_engine(url, pool_size=2)
            self._sessions = session_factory(self._engine)
        return self._sessions

    @asynccontextmanager
    async def in_tenant(self, reference: str) -> AsyncIterator[tuple["AsyncSession", "Tenant"]]:
        """A session, and the tenant a person named (id or slug) found in it; refused when
        there is none."""
        from cli.tenancy import find_tenant

        async with (await self.sessions())() as session:
            yield session, await find_tenant(session, reference)

    async def tenant(self, reference: str) -> "Tenant":
        async with self.in_tenant(reference) as (_, found):
            return found

    async def ledger(self) -> "Ledger":
        if self._ledger is None:
            from activities.ledger import Ledger

            self._ledger = Ledger(await self.sessions(), pool_size=2)
        return self._ledger

    async def webhooks(self) -> "TenantWebhooks":
        """Tenants' notification webhooks, their secrets under the settings' key ring."""
        from activities.connectors import ConnectorService
        from activities.notifications import TenantWebhooks
        from workers.registry import connector_clients

        sessions = await self.sessions()
        store, connections = connector_clients(self.settings, sessions)
        return TenantWebhooks(sessions, ConnectorService(sessions, store, connections))

    async def client(self) -> "Client":
        if self._client is None:
            from client.connection import connect
            from infra.settings import ConfigurationError
            from workers.probes import port_open

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

    async def lifecycle(self) -> "LifecycleClient":
        from client.lifecycle import LifecycleClient
        from infra.decision_signer import development_signer

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
