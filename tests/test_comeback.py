"""Waiting between retries (facility_agent/sinks/comeback.py) on real loopback sockets: a
server that was down is noticed within about a second of listening again; one that listens and
fails keeps its whole backoff (no hammering); URLs name the port to probe."""

from __future__ import annotations

import asyncio
import time

from facility_agent.sinks.comeback import retry_wait, url_target
from tests.fixtures.procs import free_port


async def _serve(port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def test_a_server_that_comes_back_ends_the_wait() -> None:
    port = free_port()

    async def come_back() -> asyncio.Server:
        await asyncio.sleep(2.0)
        return await _serve(port)

    began = time.monotonic()
    task = asyncio.create_task(come_back())
    back = await retry_wait(30.0, ("127.0.0.1", port))
    took = time.monotonic() - began
    server = await task
    server.close()
    print(f"a 30 s backoff cut to {took:.2f} s by a server back after 2 s")
    assert back and 2.0 <= took <= 4.0


async def test_a_server_that_listens_keeps_its_whole_backoff() -> None:
    port = free_port()
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        began = time.monotonic()
        back = await retry_wait(3.0, ("127.0.0.1", port))
        assert not back and time.monotonic() - began >= 2.9
    finally:
        server.close()
    assert connections == 1  # one probe, then the whole backoff: not one a second


async def test_no_target_is_a_plain_sleep() -> None:
    began = time.monotonic()
    assert not await retry_wait(0.3, None)
    assert time.monotonic() - began >= 0.29


def test_url_targets() -> None:
    assert url_target("http://127.0.0.1:8428") == ("127.0.0.1", 8428)
    assert url_target("https://influx.example.com") == ("influx.example.com", 443)
    assert url_target("mailto://127.0.0.1:2525?from=a@b.c") == ("127.0.0.1", 2525)
    assert url_target("matrixs://bot:pw@matrix.example.org/!room") == ("matrix.example.org", 443)
    assert url_target("json://hooks.local/alert") == ("hooks.local", 80)
    assert url_target("slack://T000/B000/XXXX") is None  # a cloud API: host not in the URL
    assert url_target("http://[::1") is None
