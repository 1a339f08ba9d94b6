"""Connector credentials encrypted at rest: AES-GCM under a key ring from settings.

The current key encrypts, any key of the ring decrypts. The associated data binds each
ciphertext to its tenant, connector and field, so a ciphertext copied to another row does not
decrypt. Secrets leave this module only as the return value of `read`, inside the activity
that needs them; they never travel in Temporal payloads and never appear in error messages.
"""

import os
import uuid
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from infra.keyring import KeyRing, KeyRingError
from models.commerce import ConnectorCredential
from models.db import SessionFactory
from models.projects import Connector
from workflows.contracts.errors import ErrorType

__all__ = ["CredentialError", "CredentialStore", "KeyRing", "KeyRingError"]

NONCE_BYTES = 12


class CredentialError(Exception):
    """A credential that is missing, or that no key of the ring can decrypt."""

    error_type = ErrorType.CREDENTIAL_UNAVAILABLE


def associated_data(tenant_id: uuid.UUID, connector_id: uuid.UUID, field: str) -> bytes:
    return f"changeflow/connector-credential/v1|{tenant_id}|{connector_id}|{field}".encode()


class CredentialStore:
    def __init__(self, sessions: SessionFactory, keys: KeyRing | None) -> None:
        self._sessions = sessions
        self._key_ring = keys

    @property
    def _keys(self) -> KeyRing:
        if self._key_ring is None:
            raise CredentialError(
                "no credential key ring is configured (set CHANGEFLOW_CREDENTIAL_KEYS)"
            )
        return self._key_ring

    def _seal(self, connector: Connector, field: str, value: str) -> tuple[str, bytes, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self._keys.keys[self._keys.current]).encrypt(
            nonce, value.encode(), associated_data(connector.tenant_id, connector.id, field)
        )
        return self._keys.current, nonce, sealed

    def _open(self, connector: Connector, row: ConnectorCredential) -> str:
        key = self._keys.keys.get(row.key_id)
        if key is None:
            raise CredentialError(
                f"credential {row.field!r} of connector {connector.id} is encrypted under key "
                f"{row.key_id!r}, which the key ring does not hold"
            )
        try:
            plain = AESGCM(key).decrypt(
                row.nonce,
                row.ciphertext,
                associated_data(connector.tenant_id, connector.id, row.field),
            )
        except InvalidTag:
            raise CredentialError(
                f"credential {row.field!r} of connector {connector.id} does not decrypt "
                "(tampered, or copied from another connector)"
            ) from None
        return plain.decode()

    async def write(
        self,
        session: AsyncSession,
        connector: Connector,
        values: dict[str, str],
        *,
        expires_at: datetime | None = None,
    ) -> None:
        """Store `values` encrypted, replacing those fields, in the caller's transaction."""
        for field, value in values.items():
            key_id, nonce, sealed = self._seal(connector, field, value)
            row = {
                "connector_id": connector.id,
                "field": field,
                "key_id": key_id,
                "nonce": nonce,
                "ciphertext": sealed,
                "expires_at": expires_at,
            }
            stmt = insert(ConnectorCredential).values(**row)
            await (await session.connection()).execute(
                stmt.on_conflict_do_update(
                    index_elements=["connector_id", "field"],
                    set_={
                        k: stmt.excluded[k] for k in ("key_id", "nonce", "ciphertext", "expires_at")
                    }
                    | {"updated_at": stmt.excluded.updated_at},
                )
            )

    async def replace(
        self, connector: Connector, values: dict[str, str], *, expires_at: datetime | None = None
    ) -> None:
        """`write` in a transaction of its own: the fields change together or not at all."""
        async with self._sessions() as session, session.begin():
            await self.write(session, connector, values, expires_at=expires_at)

    async def read(self, connector: Connector) -> dict[str, str]:
        return {field: value for field, (value, _) in (await self.read_expiring(connector)).items()}

    async def read_expiring(self, connector: Connector) -> dict[str, tuple[str, datetime | None]]:
        """Each field's value and when it expires (None: it does not)."""
        async with self._sessions() as session:
            rows = (
                await session.exec(
                    select(ConnectorCredential).where(
                        ConnectorCredential.connector_id == connector.id
                    )
                )
            ).all()
        if not rows:
            raise CredentialError(f"connector {connector.id} has no stored credentials")
        return {row.field: (self._open(connector, row), row.expires_at) for row in rows}

    async def reencrypt_all(self, *, batch_size: int = 500) -> int:
        """Re-encrypt every credential not under the current key; returns how many moved.
        Each batch is one transaction, so a crash leaves every row readable by the ring."""
        moved = 0
        while True:
            async with self._sessions() as session, session.begin():
                pairs = (
                    await session.exec(
                        select(ConnectorCredential, Connector)
                        .join(Connector, Connector.id == ConnectorCredential.connector_id)  # type: ignore[arg-type]
                        .where(ConnectorCredential.key_id != self._keys.current)
                        .limit(batch_size)
                        .with_for_update(of=ConnectorCredential, skip_locked=True)  # type: ignore[arg-type]
                    )
                ).all()
                for row, connector in pairs:
                    plain = self._open(connector, row)
                    row.key_id, row.nonce, row.ciphertext = self._seal(connector, row.field, plain)
                    session.add(row)
            moved += len(pairs)
            if len(pairs) < batch_size:
                return moved
