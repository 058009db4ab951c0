"""Noticing that an output's server is back, without hammering it while it is away.

Exponential backoff alone makes the minutes after a server returns the slowest: doubled to a
minute, the next retry can fall a minute after the server is back, while what was queued during
the outage is exactly what people wait for. Between two retries the delivery loops therefore
probe the server's TCP port once a second (one SYN, answered by a RST while nothing listens):
a port that was closed and now accepts ends the wait at once. A server that accepts
connections and answers with errors keeps its full backoff: the probe never shortens that.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import urlsplit

#: Seconds between two probes while waiting: the bound on how late a return is noticed.
PROBE_EVERY = 1.0

#: The port of a URL scheme when the URL names none (apprise's and HTTP's usual schemes).
DEFAULT_PORTS = {
    "http": 80,
    "https": 443,
    "json": 80,
    "jsons": 443,
    "xml": 80,
    "xmls": 443,
    "form": 80,
    "forms": 443,
    "matrix": 80,
    "matrixs": 443,
    "mailto": 25,
    "mailtos": 587,
    "ntfy": 80,
    "ntfys": 443,
    "gotify": 80,
    "gotifys": 443,
    "mqtt": 1883,
    "mqtts": 8883,
}


def url_target(url: str) -> tuple[str, int] | None:
    """(host, port) to probe for `url`, or None when it names no host of its own (Slack's,
    Telegram's ... cloud services: their API host is not in the URL; they keep plain backoff)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    scheme = parts.scheme.lower()
    if not host or scheme not in DEFAULT_PORTS:
        return None
    return host, port or DEFAULT_PORTS[scheme]


def port_open(host: str, port: int, timeout: float) -> bool:
    """Blocking: True when something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def _probe(host: str, port: int, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def retry_wait(delay: float, target: tuple[str, int] | None) -> bool:
    """Sleep `delay` before a retry, or less: return as soon as `target`, found closed, accepts
    connections again. True when the wait was cut short (the server is back)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + delay
    if target is None:
        await asyncio.sleep(delay)
        return False
    host, port = target
    if await _probe(host, port, PROBE_EVERY):
        # It accepts connections and still failed: a server error, give it the whole backoff.
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        return False
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(PROBE_EVERY, remaining))
        if await _probe(host, port, PROBE_EVERY):
            return True
