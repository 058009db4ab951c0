"""Misbehaving SNMP agents no real server produces on demand: tiny fake UDP agents built on the
simulator's codec. The driver must fail one poll with a clear reason, never hang or crash, and
never hold up another device."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from facility_agent.core.driver import DeviceError, DeviceTimeout, ProtocolError
from facility_agent.drivers.snmp import wire as ber
from facility_agent.drivers.snmp.driver import SnmpDeviceConfig, SnmpDriver
from facility_agent.simulators.faces import snmp as sa

Handler = Callable[[sa.Request], bytes | None]


class _Fake(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.handler(sa.decode_request(data))
        if reply is not None:
            self.transport.sendto(reply, addr)


@pytest.fixture
async def fake() -> AsyncIterator[Callable[[Handler], Any]]:
    transports: list[Any] = []

    async def start(handler: Handler) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Fake(handler), local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        return int(transport.get_extra_info("sockname")[1])

    yield start
    for t in transports:
        t.close()


def respond(req: sa.Request, varbinds: list[tuple[sa.Oid, sa.Value]]) -> bytes:
    vbs = b"".join(sa._enc_varbind(o, v) for o, v in varbinds)
    return sa.encode_message(req.version, req.community, sa.RESPONSE, req.request_id, 0, 0, vbs)


def driver(port: int, profile: str = "ups-mib", **kw: Any) -> SnmpDriver:
    kw.setdefault("timeout", 1.0)
    return SnmpDriver(
        SnmpDeviceConfig(
            id="bad", driver="snmp", host="127.0.0.1", port=port, profile=profile, **kw
        )
    )


async def test_garbage_and_truncated_replies_are_protocol_errors(fake: Any) -> None:
    for junk in (b"\x30\x03\x02\x01", b"hello", b"\x30\x82\xff\xff" + b"\x00" * 10):

        def handler(req: sa.Request, junk: bytes = junk) -> bytes:
            # Keep the request-id so the reply reaches the waiting request, then break it.
            good = respond(req, [])
            return good[: len(good) // 2] + junk if junk != b"hello" else good[:-3]

        port = await fake(handler)
        drv = driver(port, retries=0)
        with pytest.raises((ProtocolError, DeviceTimeout)) as err:
            await drv.poll()
        assert "127.0.0.1" in err.value.reason
        await drv.close()


async def test_wrong_types_leave_the_metric_out_or_convert(fake: Any) -> None:
    charge = (1, 3, 6, 1, 2, 1, 33, 1, 2, 4, 0)
    mfr = (1, 3, 6, 1, 2, 1, 33, 1, 1, 1, 0)
    runtime = (1, 3, 6, 1, 2, 1, 33, 1, 2, 3, 0)

    def handler(req: sa.Request) -> bytes:
        values = {
            charge: (sa.OCTETS, "not a number"),
            mfr: (sa.INTEGER, 42),
            runtime: (sa.OCTETS, " 12 "),
        }
        return respond(req, [(o, values.get(o, (sa.NO_SUCH_OBJECT, None))) for o in req.oids])

    drv = driver(await fake(handler))
    sample = await drv.poll()
    await drv.close()
    assert "battery.charge" not in sample.metrics
    assert sample.metrics["ups.mfr"] == "42"
    assert sample.metrics["battery.runtime"] == 720


async def test_endless_table_is_bounded(fake: Any) -> None:
    served: set[sa.Oid] = set()

    def handler(req: sa.Request) -> bytes:
        # Always one more row, forever.
        out = []
        cursors = list(req.oids)
        for _ in range(max(1, req.max_repetitions)):
            for i, cur in enumerate(cursors):
                cursors[i] = (*cur[:-1], cur[-1] + 1) if cur in served else (*cur, 1)
                served.add(cursors[i])
                out.append((cursors[i], (sa.GAUGE32, 1)))
        return respond(req, out)

    drv = driver(await fake(handler), profile="apc-rpdu2", timeout=5.0, max_repetitions=50)
    started = time.monotonic()
    with pytest.raises(ProtocolError) as err:
        await drv.poll()
    await drv.close()
    assert "more than" in err.value.reason
    assert time.monotonic() - started < 5


async def test_non_increasing_walk_is_a_protocol_error(fake: Any) -> None:
    def handler(req: sa.Request) -> bytes:
        return respond(req, [(o, (sa.INTEGER, 1)) for o in req.oids])  # same OID back

    drv = driver(await fake(handler), profile="apc-rpdu2")
    with pytest.raises(ProtocolError, match="not increasing"):
        await drv.poll()
    await drv.close()


async def test_error_status_and_request_id_mismatch(fake: Any) -> None:
    def gen_err(req: sa.Request) -> bytes:
        vbs = b"".join(sa._enc_varbind(o, (sa.NULL, None)) for o in req.oids)
        return sa.encode_message(req.version, req.community, sa.RESPONSE, req.request_id, 5, 1, vbs)

    drv = driver(await fake(gen_err))
    with pytest.raises(ProtocolError, match="genErr"):
        await drv.poll()
    await drv.close()

    def other_id(req: sa.Request) -> bytes:
        req.request_id += 1
        return respond(req, [])

    drv = driver(await fake(other_id), timeout=0.5, retries=0)
    with pytest.raises(DeviceTimeout):
        await drv.poll()
    await drv.close()


async def test_closed_port_is_reported_fast() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    drv = driver(port, timeout=3.0)
    started = time.monotonic()
    with pytest.raises(DeviceError) as err:
        await drv.poll()
    await drv.close()
    assert "unreachable" in err.value.reason or "no answer" in err.value.reason
    assert time.monotonic() - started < 3.5


async def test_a_silent_agent_does_not_hold_up_another(fake: Any) -> None:
    silent = await fake(lambda req: None)
    live = await fake(lambda req: respond(req, [(o, (sa.INTEGER, 7)) for o in req.oids]))
    slow = driver(silent, timeout=2.0, retries=1)
    fast = driver(live)
    slow_task = asyncio.create_task(slow.poll())
    started = time.monotonic()
    for _ in range(20):
        sample = await fast.poll()
        assert sample.metrics["battery.charge"] == 7
    assert time.monotonic() - started < 1.5
    with pytest.raises(DeviceTimeout):
        await slow_task
    await slow.close()
    await fast.close()


def test_ber_round_trip_and_malformed_input() -> None:
    oid = (1, 3, 6, 1, 4, 1, 318, 1, 1, 26, 9, 4, 3, 1, 6, 300000)
    msg = ber.encode_request(1, b"public", ber.GETBULK, 12345, [oid], 0, 10)
    req = sa.decode_request(msg)
    assert req.oids == [oid] and req.max_repetitions == 10 and req.request_id == 12345
    reply = respond(req, [(oid, (sa.COUNTER32, 2**32 - 1)), (oid, (sa.INTEGER, -5))])
    resp = ber.decode_response(reply, b"public")
    assert resp.varbinds == [(oid, (ber.COUNTER32, 2**32 - 1)), (oid, (ber.INTEGER, -5))]
    with pytest.raises(ber.BerError):
        ber.decode_response(reply, b"other")
    for cut in range(1, len(reply)):
        with pytest.raises(ber.BerError):
            ber.decode_response(reply[:cut])


async def test_simulator_drops_malformed_packets_and_keeps_serving() -> None:
    from facility_agent.simulators.site import SimulatedSite

    face = sa.SnmpAgentFace(SimulatedSite.default())
    for junk in (b"", b"\x30", b"\x30\x05\x02\x01\x09\x04\x00", b"\xff" * 100):
        assert face.handle(junk) is None
    good = ber.encode_request(1, b"ups-a", ber.GET, 1, [(1, 3, 6, 1, 2, 1, 1, 5, 0)])
    reply = face.handle(good)
    assert reply is not None
    assert ber.decode_response(reply).varbinds[0][1] == (ber.OCTET_STRING, b"ups-a")
    assert face.stats.dropped == 4


def test_counter_wrap_and_agent_restart() -> None:
    from facility_agent.drivers.snmp.driver import _Counter

    c = _Counter(2**32 - 10)
    assert c.update(5, 2**32) == 2**32 + 5  # wrapped: +15
    assert c.update(100, 2**32) == 2**32 + 100
    assert c.update(3, 2**32) == 3  # a big jump back: the agent restarted, new baseline
