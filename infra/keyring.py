"""A key ring of AES-256 keys by key id: the current key encrypts, every key of the ring decrypts.

Shared by what encrypts at rest (connector credentials, activities/credentials.py) and what
encrypts in Temporal (payloads, infra/codec.py); each has its own ring in the settings.
"""

import base64
import binascii
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class KeyRingError(ValueError):
    """A key ring that cannot work; the message names the entry, never a key."""


@dataclass(frozen=True)
class KeyRing:
    keys: dict[str, bytes]
    current: str

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise KeyRingError(f"the current key id {self.current!r} is not in the key ring")
        for key_id, key in self.keys.items():
            if len(key) != 32:
                raise KeyRingError(f"key {key_id!r} must be 32 bytes (AES-256), not {len(key)}")

    @classmethod
    def parse(cls, spec: str, current: str | None = None) -> "KeyRing":
        """'id:base64key,id2:base64key'; the first entry is current unless `current` names one."""
        keys: dict[str, bytes] = {}
        for entry in filter(None, (part.strip() for part in spec.split(","))):
            key_id, sep, encoded = entry.partition(":")
            if not sep or not key_id:
                raise KeyRingError("each key ring entry is 'id:base64-key'")
            try:
                keys[key_id] = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise KeyRingError(f"key {key_id!r} is not valid base64") from None
        if not keys:
            raise KeyRingError("the key ring is empty")
        return cls(keys=keys, current=current or next(iter(keys)))

    @staticmethod
    def new_key() -> str:
        return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
