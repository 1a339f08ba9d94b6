"""Payloads encrypted before they reach Temporal: AES-GCM under the payload key ring.

Every client, worker, replayer and script of ours takes its converter from `data_converter`, so
prompts, diffs, model output, approval reasons and failure messages are ciphertext in the
history. Search attributes are not payloads of a workflow's input: they stay plaintext, by design,
so lifecycles can be listed by tenant, status and risk.

Encoding follows Temporal's encryption sample (and its codecs in other languages): the whole
serialized payload is sealed as `nonce + ciphertext`, metadata `encoding: binary/encrypted` and
`encryption-key-id`. A payload without that encoding is passed through on decode, so a caller
with no codec (the `temporal` CLI without `--codec-endpoint`, an older history) still works.
"""

import dataclasses
import functools
import hashlib
import os
from collections.abc import Sequence

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
    PayloadConverter,
)
from temporalio.exceptions import ApplicationError

from infra.keyring import KeyRing, KeyRingError
from infra.settings import ConfigurationError, Settings
from workflows.contracts.errors import ErrorType

log = structlog.get_logger(__name__)

ENCRYPTED_ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12

# Public, in this source file: it keeps development histories shaped like production's and
# protects nothing. Production (CHANGEFLOW_ENV=production) refuses to start with it.
DEVELOPMENT_KEY_ID = "changeflow-development"
DEVELOPMENT_KEY_RING = KeyRing(
    keys={DEVELOPMENT_KEY_ID: hashlib.sha256(b"changeflow development payload key").digest()},
    current=DEVELOPMENT_KEY_ID,
)


class PayloadDecryptionError(ValueError):
    """An encrypted payload this key ring cannot open: unknown key id, or tampered."""


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: KeyRing) -> None:
        self._keys = keys
        self._current = AESGCM(keys.keys[keys.current])

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [
            self.decrypt(payload)
            if payload.metadata.get("encoding") == ENCRYPTED_ENCODING
            else payload
            for payload in payloads
        ]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        return Payload(
            metadata={
                "encoding": ENCRYPTED_ENCODING,
                KEY_ID_METADATA: self._keys.current.encode(),
            },
            data=nonce + self._current.encrypt(nonce, payload.SerializeToString(), None),
        )

    def decrypt(self, payload: Payload) -> Payload:
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        key = self._keys.keys.get(key_id)
        if key is None:
            raise PayloadDecryptionError(
                f"payload is encrypted under key id {key_id!r}, which the payload key ring "
                f"(CHANGEFLOW_PAYLOAD_KEYS) does not hold; known: {sorted(self._keys.keys)}"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            return Payload.FromString(AESGCM(key).decrypt(nonce, sealed, None))
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload under key id {key_id!r} does not decrypt (tampered or truncated)"
            ) from None


def payload_key_ring(settings: Settings) -> KeyRing:
    """The configured ring; without one, the development ring, never in production."""
    if settings.payload_keys is not None:
        try:
            return KeyRing.parse(settings.payload_keys.get_secret_value(), settings.payload_key_id)
        except KeyRingError as exc:
            raise ConfigurationError(f"CHANGEFLOW_PAYLOAD_KEYS: {exc}") from None
    if settings.production:
        raise ConfigurationError(
            "CHANGEFLOW_ENV=production needs CHANGEFLOW_PAYLOAD_KEYS ('id:base64-32-bytes,...'): "
            "the development payload key is public"
        )
    if settings.payload_key_id is not None:
        raise ConfigurationError(
            "CHANGEFLOW_PAYLOAD_KEY_ID is set but CHANGEFLOW_PAYLOAD_KEYS is not"
        )
    return DEVELOPMENT_KEY_RING


def warn_about_development_keys(settings: Settings) -> None:
    """One warning per process that uses the development ring; called once it is in use, so a
    start that fails anyway still ends with its one line of error."""
    if settings.payload_keys is None:
        _warn_development_key_ring()


@functools.cache
def _warn_development_key_ring() -> None:
    log.warning(
        "payload_development_key_ring",
        detail="CHANGEFLOW_PAYLOAD_KEYS is not set: payloads are encrypted with the public "
        "development key ring (infra/codec.py); set it before real data flows",
    )


class EncryptedFailureConverter(DefaultFailureConverterWithEncodedAttributes):
    """Failure messages and stack traces move into the failure's encoded attributes, which the
    codec encrypts. A typed refusal's message also stays readable: our code words it from ids,
    statuses and rule names, never from what a tenant wrote, and a failed query reaches its
    caller as the message text alone (the server passes on nothing else)."""

    def to_failure(
        self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure
    ) -> None:
        super().to_failure(exception, payload_converter, failure)
        if isinstance(exception, ApplicationError) and exception.type in _REFUSAL_TYPES:
            failure.message = exception.message


_REFUSAL_TYPES = frozenset(ErrorType)


def data_converter(settings: Settings) -> DataConverter:
    """Our pydantic JSON payloads, encrypted, with failure messages and stack traces encrypted
    too (EncryptedFailureConverter)."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(payload_key_ring(settings)),
        failure_converter_class=EncryptedFailureConverter,
    )
