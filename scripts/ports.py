"""Ports for servers the tools and tests start on this machine."""

import random
import socket
from pathlib import Path

# Linux hands out its ephemeral range (32768-60999 unless configured) to outgoing connections.
# A server given a port from that range can find it taken by a client's socket when it starts,
# or restarts (chaos restarts its servers on their ports): pick below the range instead.
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port where nothing listens now, outside the range outgoing connections take."""
    highest = _ephemeral_start() - 1
    for _ in range(100):
        port = random.randint(_LOWEST, highest)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {_LOWEST} and {highest}")
