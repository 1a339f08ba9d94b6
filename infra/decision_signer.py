"""A development signer of decision tokens: what the platform's identity service does in
production, for `changeflow` on a development stack, the demo, `make dev`, the tests and the
`temporal` CLI recipes (through `python -m scripts.decision_signer`).

It keeps an Ed25519 key pair in `<data folder>/decision-signer/` (the private key mode 0600)
and writes the public half as `jwks.json` there, the file the workers read when
CHANGEFLOW_DECISION_JWKS is unset. Never use it in production: whoever reads the folder can
sign as anyone.
"""

import json
import os
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.settings import DEV_DECISION_SIGNER_DIR, DecisionTokenMode, Settings
from workflows.contracts.decisions import DecisionAction

DEFAULT_LIFETIME_SECONDS = 300


class DevelopmentSigner:
    def __init__(self, folder: Path, *, issuer: str, audience: str) -> None:
        self.folder = folder
        self.issuer = issuer
        self.audience = audience
        self._key = _load_or_create_key(folder / "signing-key.pem")
        public = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # The kid names the key, so a new key pair never verifies with an old JWKS entry.
        self.kid = f"dev-{uuid.uuid5(uuid.NAMESPACE_OID, public.hex()).hex[:16]}"
        self.jwks_path = folder / "jwks.json"
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self._key.public_key()))
        jwks = {"keys": [{**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}
        if not self.jwks_path.exists() or json.loads(self.jwks_path.read_text()) != jwks:
            _write_atomically(self.jwks_path, json.dumps(jwks, indent=2) + "\n", mode=0o644)

    @classmethod
    def for_data_dir(cls, data_dir: Path, *, issuer: str, audience: str) -> "DevelopmentSigner":
        return cls(data_dir / DEV_DECISION_SIGNER_DIR, issuer=issuer, audience=audience)

    def issue(
        self,
        *,
        user: uuid.UUID,
        tenant: uuid.UUID,
        request: uuid.UUID,
        action: DecisionAction | str,
        plan_hash: str | None = None,
        lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS,
        issued_at: float | None = None,
        **overrides: object,
    ) -> str:
        """A signed decision token; `overrides` replace, add or (None) remove claims: tests
        forge bad tokens with them."""
        now = int(time.time() if issued_at is None else issued_at)
        claims: dict[str, object] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user),
            "tenant": str(tenant),
            "request": str(request),
            "action": str(action),
            "iat": now,
            "exp": now + lifetime_seconds,
            "jti": uuid.uuid4().hex,
        }
        if plan_hash is not None:
            claims["plan_hash"] = plan_hash
        claims.update(overrides)
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid})


def development_signer(settings: Settings) -> DevelopmentSigner | None:
    """The signer for tools of a development stack (the changeflow command, the demo, the
    benchmarks): only when its workers require tokens and trust this signer's keys."""
    if settings.decision_tokens is not DecisionTokenMode.REQUIRED:
        return None
    if not settings.uses_dev_decision_signer:
        return None
    return DevelopmentSigner.for_data_dir(
        settings.data_dir, issuer=settings.decision_issuer, audience=settings.decision_audience
    )


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_bytes(pem)
        partial.chmod(0o600)
        try:  # a link fails if it exists: of two processes, the first key written wins
            os.link(partial, path)
        except FileExistsError:
            pass
        finally:
            partial.unlink()
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey), f"{path} is not an Ed25519 key"
    return key


def _write_atomically(path: Path, text: str, *, mode: int) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.chmod(mode)
    partial.replace(path)
