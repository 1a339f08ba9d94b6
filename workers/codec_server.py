"""`changeflow-codec-server`: the payload codec over HTTP, for the Temporal Web UI (its Remote
Codec Endpoint) and the `temporal` CLI (`--codec-endpoint`), so operators read decrypted
payloads without holding the keys.

POST /encode and POST /decode take and return Temporal's JSON Payloads format,
`{"payloads": [{"metadata": {"encoding": "<base64>"}, "data": "<base64>"}]}`. Callers send
`Authorization: Bearer <CHANGEFLOW_CODEC_SERVER_TOKEN>`; browsers of the allowed origins
(CHANGEFLOW_CODEC_CORS_ORIGINS, default the Web UI's) get CORS answers, preflight included.
A plain ASGI app: two routes need no framework.
"""

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
import uvicorn
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from infra.codec import (
    EncryptionCodec,
    PayloadDecryptionError,
    payload_key_ring,
    warn_about_development_keys,
)
from infra.entry_points import run_entry_point
from infra.settings import ConfigurationError, Settings

log = structlog.get_logger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024 * 1024


class CodecServer:
    def __init__(self, settings: Settings) -> None:
        self._codec = EncryptionCodec(payload_key_ring(settings))
        self._token = settings.codec_server_token
        self._origins = set(settings.codec_allowed_origins)
        self._routes = {"/encode": self._codec.encode, "/decode": self._codec.decode}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cors = self._cors_headers(headers.get("origin"))
        route = self._routes.get(scope["path"].rstrip("/"))
        if route is None:
            return await _answer(send, 404, {"error": "not found"}, cors)
        if scope["method"] == "OPTIONS":
            return await _answer(send, 204, None, cors)
        if scope["method"] != "POST":
            return await _answer(send, 405, {"error": "use POST"}, cors)
        if not self._authorized(headers.get("authorization")):
            return await _answer(send, 401, {"error": "missing or bad Authorization header"}, cors)
        body = await _read_body(receive)
        if body is None:
            return await _answer(send, 413, {"error": "body too large"}, cors)
        try:
            payloads = json_format.Parse(body, Payloads())
        except json_format.ParseError as exc:
            return await _answer(send, 400, {"error": f"not a Payloads JSON object: {exc}"}, cors)
        try:
            answered = Payloads(payloads=await route(payloads.payloads))
        except PayloadDecryptionError as exc:
            return await _answer(send, 400, {"error": str(exc)}, cors)
        await _answer(send, 200, json_format.MessageToDict(answered), cors)

    def _authorized(self, header: str | None) -> bool:
        if self._token is None:  # development only: codec_server_settings refuses it otherwise
            return True
        expected = f"Bearer {self._token.get_secret_value()}"
        return header is not None and hmac.compare_digest(header.encode(), expected.encode())

    def _cors_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        if origin is None or origin.rstrip("/") not in self._origins:
            return []
        return [
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-allow-methods", b"POST, OPTIONS"),
            (b"access-control-allow-headers", b"authorization, content-type, x-namespace"),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-max-age", b"600"),
            (b"vary", b"origin"),
        ]


async def _read_body(receive: Receive) -> bytes | None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            return None
        if not message.get("more_body"):
            return body


async def _answer(
    send: Send, status: int, content: object, extra: list[tuple[bytes, bytes]]
) -> None:
    body = b"" if content is None else json.dumps(content).encode()
    headers = [*extra, (b"content-length", str(len(body)).encode())]
    if content is not None:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def check_codec_server_settings(settings: Settings) -> None:
    if settings.production and settings.codec_server_token is None:
        raise ConfigurationError(
            "CHANGEFLOW_ENV=production needs CHANGEFLOW_CODEC_SERVER_TOKEN: "
            "the codec server decrypts for whoever calls it"
        )


async def serve(settings: Settings) -> int:
    app = CodecServer(settings)
    check_codec_server_settings(settings)
    warn_about_development_keys(settings)
    if settings.codec_server_token is None:
        log.warning("codec_server_unauthenticated", detail="CHANGEFLOW_CODEC_SERVER_TOKEN unset")
    config = uvicorn.Config(
        app,
        host=settings.codec_server_host,
        port=settings.codec_server_port,
        lifespan="off",
        log_config=None,  # our logging (infra/logging.py) is configured already
        access_log=False,
    )
    log.info(
        "codec_server_started",
        url=settings.codec_server_url,
        allowed_origins=sorted(settings.codec_allowed_origins),
    )
    await uvicorn.Server(config).serve()
    return 0


def main() -> None:
    run_entry_point(serve, prog="changeflow-codec-server")


if __name__ == "__main__":
    main()
