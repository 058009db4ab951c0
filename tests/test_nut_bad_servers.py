"""Servers that misbehave: each failure is the right DeviceError, in time, and the next poll
starts afresh instead of reading what is left of a broken reply.

Tiny fakes here on purpose: no real upsd misbehaves on demand.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from facility_agent.core.driver import (
    AuthError,
    DeviceError,
    DeviceTimeout,
    NotFoundError,
    ProtocolError,
)
from facility_agent.drivers.nut.driver import NutDriver
from tests.fixtures.drivers import closing_drivers

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Behaviour = Callable[[Reader, Writer], Awaitable[None]]

TIMEOUT = 0.5
SECRET = "s3cret-pw"
GOOD = (
    b'BEGIN LIST VAR ups\nVAR ups ups.status "OL"\nVAR ups battery.charge "99"\nEND LIST VAR ups\n'
)


async def _request(reader: Reader, writer: Writer) -> bytes:
    """Answer the login lines with OK and return the first other request line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("client went away")
        if line.startswith((b"USERNAME", b"PASSWORD")):
            writer.write(b"OK\n")
            continue
        if line.startswith(b"SET VAR"):  # the driver's credential check of a fresh connection
            writer.write(b"ERR VAR-NOT-SUPPORTED\n")
            continue
        return line


async def good(reader: Reader, writer: Writer) -> None:
    while True:
        try:
            await _request(reader, writer)
        except (ConnectionError, OSError):
            return
        writer.write(GOOD)
        await writer.drain()


class FakeUpsd:
    """Serves connection n with behaviours[n] (then `good`), counting connections."""

    def __init__(self, *behaviours: Behaviour) -> None:
        self.behaviours = list(behaviours)
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FakeUpsd:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        index = self.connections
        self.connections += 1
        behaviour = self.behaviours[index] if index < len(self.behaviours) else good
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await behaviour(reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def make_driver() -> AsyncIterator[Callable[..., NutDriver]]:
    """`make_driver(port, **keys)`: a driver for UPS `ups` on a loopback port."""
    keys = {"id": "ups-x", "driver": "nut", "host": "127.0.0.1", "ups": "ups", "timeout": TIMEOUT}
    async with closing_drivers(NutDriver, keys) as make:
        yield lambda port, **extra: make(port=port, **extra)


async def _fails(driver: NutDriver, kind: type[DeviceError]) -> DeviceError:
    started = time.monotonic()
    with pytest.raises(kind) as info:
        await driver.poll()
    assert time.monotonic() - started < TIMEOUT + 0.5
    return info.value


async def _recovers(driver: NutDriver) -> None:
    sample = await driver.poll()
    assert sample.status == ("OL",)
    assert sample.metrics == {"battery.charge": 99}


async def test_garbage_reply(make_driver: Callable[..., NutDriver]) -> None:
    async def garbage(reader: Reader, writer: Writer) -> None:
        await _request(reader, writer)
        writer.write(b"\x00\xffHELLO I am not upsd\n" + GOOD)
        await asyncio.sleep(5)

    async with FakeUpsd(garbage) as fake:
        driver = make_driver(fake.port)
        err = await _fails(driver, ProtocolError)
        assert f"127.0.0.1:{fake.port}" in err.reason and "unexpected reply" in err.reason
        await _recovers(driver)
        assert fake.connections == 2


async def test_accept_and_never_answer_times_out_and_drops_late_reply(
    make_driver: Callable[..., NutDriver],
) -> None:
    async def late(reader: Reader, writer: Writer) -> None:
        await _request(reader, writer)
        await asyncio.sleep(TIMEOUT + 0.3)
        # A reply after the deadline must never be read as the answer to a later request.
        writer.write(GOOD.replace(b'"99"', b'"1"'))
        await asyncio.sleep(5)

    async with FakeUpsd(late) as fake:
        driver = make_driver(fake.port)
        err = await _fails(driver, DeviceTimeout)
        assert f"127.0.0.1:{fake.port}" in err.reason and "LIST VAR ups" in err.reason
        await asyncio.sleep(0.5)
        await _recovers(driver)
        assert fake.connections == 2


async def test_hang_up_mid_reply(make_driver: Callable[..., NutDriver]) -> None:
    async def hang_up(reader: Reader, writer: Writer) -> None:
        await _request(reader, writer)
        writer.write(b'BEGIN LIST VAR ups\nVAR ups battery.charge "50"\nVAR ups ups.st')
        await writer.drain()

    async with FakeUpsd(hang_up) as fake:
        driver = make_driver(fake.port)
        err = await _fails(driver, DeviceError)
        assert f"127.0.0.1:{fake.port}" in err.reason
        assert "closed the connection" in err.reason and "after 1 lines" in err.reason
        await _recovers(driver)


async def test_endless_line_is_bounded(make_driver: Callable[..., NutDriver]) -> None:
    chunk = b"x" * 65536
    sent = 0

    async def endless(reader: Reader, writer: Writer) -> None:
        nonlocal sent
        await _request(reader, writer)
        writer.write(b"BEGIN LIST VAR ups\nVAR ups ups.status ")
        while sent < 512 * 1024 * 1024:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)

    async with FakeUpsd(endless) as fake:
        driver = make_driver(fake.port)
        tracemalloc.start()
        try:
            err = await _fails(driver, ProtocolError)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert "longer than 65536 bytes" in err.reason and f"127.0.0.1:{fake.port}" in err.reason
        assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while reading an endless line"
        await _recovers(driver)


async def test_unknown_ups_keeps_the_connection(make_driver: Callable[..., NutDriver]) -> None:
    async def unknown_then_good(reader: Reader, writer: Writer) -> None:
        await _request(reader, writer)
        writer.write(b"ERR UNKNOWN-UPS\n")
        await good(reader, writer)

    async with FakeUpsd(unknown_then_good) as fake:
        driver = make_driver(fake.port)
        err = await _fails(driver, NotFoundError)
        assert err.permanent
        assert "UNKNOWN-UPS" in err.reason and f"127.0.0.1:{fake.port}" in err.reason
        await _recovers(driver)
        assert fake.connections == 1  # a clean ERR leaves the stream in step


async def test_access_denied_is_auth_error_without_the_password(
    make_driver: Callable[..., NutDriver],
) -> None:
    async def deny(reader: Reader, writer: Writer) -> None:
        assert (await reader.readline()).startswith(b"USERNAME")
        writer.write(b"OK\n")
        assert (await reader.readline()).startswith(b"PASSWORD")
        writer.write(b"ERR ACCESS-DENIED\n")
        await asyncio.sleep(5)

    async with FakeUpsd(deny) as fake:
        driver = make_driver(fake.port, username="mon", password=SECRET)
        err = await _fails(driver, AuthError)
        assert "ACCESS-DENIED" in err.reason and f"127.0.0.1:{fake.port}" in err.reason
        assert SECRET not in str(err) and SECRET not in repr(err)
        assert SECRET not in repr(driver.cfg) and SECRET not in repr(driver._conn())
        await _recovers(driver)  # a fresh connection sends USERNAME again
        assert fake.connections == 2


async def test_connection_refused_names_the_server(
    make_driver: Callable[..., NutDriver],
) -> None:
    async with FakeUpsd() as fake:
        port = fake.port
    driver = make_driver(port)
    err = await _fails(driver, DeviceError)
    assert f"cannot connect to NUT server 127.0.0.1:{port}" in err.reason


async def test_cancelled_request_drops_the_connection(
    make_driver: Callable[..., NutDriver],
) -> None:
    async def slow(reader: Reader, writer: Writer) -> None:
        await _request(reader, writer)
        await asyncio.sleep(0.2)
        writer.write(GOOD.replace(b'"99"', b'"1"'))
        await asyncio.sleep(5)

    async with FakeUpsd(slow) as fake:
        driver = make_driver(fake.port)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(driver.poll(), 0.05)  # the poller's own deadline
        await asyncio.sleep(0.3)
        await _recovers(driver)
        assert fake.connections == 2
