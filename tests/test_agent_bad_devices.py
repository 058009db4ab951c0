"""Devices that misbehave cost only themselves: the agent stays up, reports each one lost with a
clear reason, and every other device keeps its schedule. Published over a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from facility_agent.config.site import MqttConfig, SiteConfig
from facility_agent.core.registry import driver_class
from facility_agent.runtime.agent import Agent
from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.mosquitto import Broker, Collector

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Behaviour = Callable[[Reader, Writer], Awaitable[None]]


async def garbage(reader: Reader, writer: Writer) -> None:
    while await reader.readline():
        writer.write(b"\x00\xff this is no upsd \x1b[2J\n")


async def silent(reader: Reader, writer: Writer) -> None:
    while await reader.readline():
        pass


async def hang_up(reader: Reader, writer: Writer) -> None:
    await reader.readline()
    writer.write(b'BEGIN LIST VAR ups\nVAR ups ups.status "OL"\n')
    await writer.drain()
    writer.close()


async def endless(reader: Reader, writer: Writer) -> None:
    await reader.readline()
    chunk = b"A" * 65536
    for _ in range(200):  # 13 MB at most, far past the client's line limit
        writer.write(chunk)
        await writer.drain()


async def serve(behaviour: Behaviour) -> tuple[asyncio.Server, int]:
    async def handle(reader: Reader, writer: Writer) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await behaviour(reader, writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def nut_device(dev_id: str, port: int, ups: str = "ups", **extra: Any) -> Any:
    return driver_class("nut").config_model.model_validate(
        {
            "id": dev_id,
            "driver": "nut",
            "host": "127.0.0.1",
            "port": port,
            "ups": ups,
            "interval": 0.5,
            "timeout": 0.5,
            "lost_after": 2,
            "backoff_max": 2,
            **extra,
        }
    )


async def test_bad_devices_are_lost_with_reasons_and_others_keep_schedule(
    nut_simulator: RunningSimulator,
    mosquitto_broker: Broker,
    mqtt_subscribe: Callable[..., Collector],
) -> None:
    servers = {
        name: await serve(b)
        for name, b in [
            ("garbage", garbage),
            ("silent", silent),
            ("hangup", hang_up),
            ("endless", endless),
        ]
    }
    sim_port = nut_simulator.nut_port
    devices = [
        nut_device("good", sim_port, "ups-a"),
        *(nut_device(name, port) for name, (_, port) in servers.items()),
        nut_device("nosuch", sim_port, "ups-zz"),
        nut_device("badauth", sim_port, "ups-b", username="admin", password="wrong-pw-123"),
    ]
    site = SiteConfig(
        site="lab1",
        mqtt=MqttConfig(host=mosquitto_broker.host, port=mosquitto_broker.port),
        devices=devices,
    )
    col = mqtt_subscribe(mosquitto_broker, "facility/lab1/#")
    agent = Agent(site)
    await agent.start()
    try:
        await asyncio.sleep(6)
        good = agent.pollers["good"]
        # 0.5 s interval for 6 s: about 12 polls; a generous bound for a busy machine.
        assert good.polls >= 8 and good.failures == 0
        assert agent.state.get("good") is not None
        assert agent.state.get("good").comm == "ok"  # type: ignore[union-attr]
        expected = {
            "garbage": "unexpected reply",
            "silent": "did not answer",
            "hangup": "closed the connection",
            "endless": "line",
            "nosuch": "UNKNOWN-UPS",
            "badauth": "refused user",
        }
        for dev, words in expected.items():
            st = agent.state.get(dev)
            assert st is not None and st.comm == "lost", dev
            assert st.reason and words in st.reason, (dev, st.reason)
            assert "wrong-pw-123" not in st.reason
        await asyncio.sleep(0.5)
        lost = {}
        for msg in col.snapshot("facility/lab1/events"):
            ev = json.loads(msg.payload)
            if ev["type"] == "device.comm_lost":
                lost.setdefault(ev["device"], []).append(ev)
        assert set(lost) == set(expected)
        assert all(len(v) == 1 for v in lost.values()), "one comm_lost per device, not per poll"
        assert all(b"wrong-pw-123" not in m.payload for m in col.snapshot())
        # Lost devices are retried with back-off, not hammered at the 0.5 s interval.
        assert agent.pollers["silent"].polls <= 8
    finally:
        await agent.stop()
        for server, _ in servers.values():
            server.close()


async def test_driver_crash_is_contained(mosquitto_broker: Broker) -> None:
    """A driver that raises something unexpected is a failed poll, not a dead agent."""
    from facility_agent.core.driver import DeviceConfig, Driver
    from facility_agent.core.model import Sample

    class Broken(Driver):
        name = "broken"

        async def poll(self) -> Sample:
            raise RuntimeError("bug in a plugin")

    cfg = DeviceConfig(id="b", driver="broken", interval=0.1, lost_after=2)
    agent = Agent(SiteConfig(site="lab1", devices=[]), sinks=[])
    seen: list[str] = []
    agent.on_event(lambda e: seen.append(e.type))
    await agent.start()
    try:
        agent.add_device(cfg, Broken(cfg))
        await asyncio.sleep(0.5)
    finally:
        await agent.stop()
    assert seen == ["device.comm_lost"]
    st = agent.state.get("b")
    assert st is not None and "RuntimeError: bug in a plugin" in (st.reason or "")
