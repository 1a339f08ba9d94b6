"""A tenant's webhook receiver for tests: a tiny asyncio HTTP/1.1 server that records every
request it is sent and checks its signature with the product's one rule (verify_signature).

It can be DOWN (nothing listens on its port: connections are refused) and come up later, and
it can answer 503 to its first K requests, so tests see retries as a real receiver would.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from activities.webhook_signature import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    verify_signature,
)
from tests.process_support import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    answered: int
    verified: bool

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def event_id(self) -> str:
        return self.headers[EVENT_ID_HEADER.lower()]

    @property
    def event_type(self) -> str:
        return self.headers[EVENT_TYPE_HEADER.lower()]

    @property
    def signature(self) -> str:
        return self.headers[SIGNATURE_HEADER.lower()]


@dataclass
class WebhookReceiver:
    secret: str
    # The first this many requests get a 503 (recorded, as a real receiver's log would).
    fail_first: int = 0
    # Every request gets this status instead of 200 (e.g. 410: gone for good).
    status: int = 200
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/changeflow"

    @property
    def delivered(self) -> list[Received]:
        """Requests it accepted (answered 2xx)."""
        return [r for r in self.received if 200 <= r.answered < 300]

    def of_type(self, event_type: str) -> list[Received]:
        return [r for r in self.delivered if r.event_type == event_type]

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def stop(self) -> None:
        """Down: the port refuses connections until start()."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, event_type: str, *, count: int = 1, within: float = 60) -> None:
        async with asyncio.timeout(within):
            while len(self.of_type(event_type)) < count:
                await self._arrived.wait()
                self._arrived.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode()
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode().strip()) != "":
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            try:
                verify_signature(self.secret, headers.get(SIGNATURE_HEADER.lower()), body)
                verified = True
            except SignatureError:
                verified = False
            answer = 503 if len(self.received) < self.fail_first else self.status
            self.received.append(
                Received(request_line.split(" ")[1], headers, body, answer, verified)
            )
            self._arrived.set()
            writer.write(
                f"HTTP/1.1 {answer} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def webhook_receiver(secret: str, **options: Any) -> AsyncIterator[WebhookReceiver]:
    """A receiver that is up until the block ends (tests may stop and start it inside)."""
    receiver = WebhookReceiver(secret=secret, **options)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()
