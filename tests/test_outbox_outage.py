"""The outbox end to end: the agent polls the simulated site while Mosquitto is down, then every
state change and event arrives, in order, none lost, within 3 s of the broker's return (with
the default reconnect backoff); and an agent killed mid-outage leaves its
outbox to the next one, which delivers it.

The outage lasts FACILITY_OUTAGE_SECONDS: two minutes by default, as the issue asks ("stopped
for minutes"); set it lower for a quick local run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from facility_agent.config.site import parse_site
from facility_agent.core.model import DeviceState, Event, iso_ts
from facility_agent.runtime.agent import Agent
from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.mosquitto import Broker, Collector, Received
from tests.fixtures.procs import Proc

OUTAGE = float(os.environ.get("FACILITY_OUTAGE_SECONDS", "120"))
P = "facility/lab1"


def site_yaml(broker: Broker, nut_port: int, outbox: Path) -> str:
    site: dict[str, Any] = {
        "site": "lab1",
        "state_dir": str(outbox.parent),
        # The default backoff (0.5 s doubled up to 30 s): the sink must still be back at once.
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5},
        "outbox": {"path": str(outbox)},
        "devices": [
            {
                "id": u,
                "driver": "nut",
                "host": "127.0.0.1",
                "port": nut_port,
                "ups": u,
                "interval": 0.5,
            }
            for u in ("ups-a", "ups-b")
        ],
    }
    return yaml.safe_dump(site)


def key_of(topic: str, payload: bytes) -> tuple[str, str] | None:
    if topic == f"{P}/events":
        return ("event", orjson.loads(payload)["id"])
    if topic.endswith("/state") and topic.startswith(P):
        body = orjson.loads(payload)
        return ("state", f"{body['device']}@{body['ts']}")
    return None


def received_keys(col: Collector) -> list[tuple[str, str]]:
    keys = [key_of(m.topic, m.payload) for m in col.snapshot()]
    return list(dict.fromkeys(k for k in keys if k is not None))


async def wait_for(col: Collector, check: Callable[[list[Received]], bool], timeout: float) -> None:
    await asyncio.to_thread(col.wait_for, check, timeout)


async def test_broker_outage_while_the_agent_works_loses_nothing(
    tmp_path: Path,
    nut_simulator: RunningSimulator,
    mosquitto_factory: Callable[..., Broker],
    mqtt_subscribe: Callable[..., Collector],
) -> None:
    broker = mosquitto_factory(persistent=True)
    col = mqtt_subscribe(broker, f"{P}/#", client_id="outbox-watcher", persistent=True)
    col.client.reconnect_delay_set(0.1, 0.1)  # type: ignore[arg-type]  # the watcher is not late
    config = parse_site(site_yaml(broker, nut_simulator.nut_port, tmp_path / "outbox.sqlite"))
    agent = Agent(config)
    sent: list[tuple[str, str]] = []

    def on_state(st: DeviceState) -> None:
        sent.append(("state", f"{st.device}@{iso_ts(st.ts)}"))

    def on_event(ev: Event) -> None:
        sent.append(("event", ev.id))

    agent.on_state(on_state)
    agent.on_event(on_event)
    await agent.start()
    try:
        await wait_for(col, lambda m: len(received_keys(col)) >= 2, 20)
        await asyncio.to_thread(broker.stop)
        before = len(sent)
        nut_simulator.inject("generator.crank_fail")
        nut_simulator.inject("utility.fail")
        await asyncio.sleep(OUTAGE / 2)
        nut_simulator.inject("utility.restore")
        await asyncio.sleep(OUTAGE / 2)
        during = len(sent) - before
        assert during > 10, "the agent kept working during the outage"
        snapshot = list(sent)  # what was raised while the broker was away
        await asyncio.to_thread(broker.start)  # returns once the port accepts connections
        back = time.monotonic()
        await wait_for(col, lambda m: set(received_keys(col)) >= set(snapshot), 30)
        took = time.monotonic() - back
        print(f"outage {OUTAGE:.0f} s: delivered {took:.2f} s after the broker was back")
        assert took <= 3.0  # goal 2 s; generous for a loaded machine
        await asyncio.sleep(1.0)
        snapshot = list(sent)
        await wait_for(col, lambda m: set(received_keys(col)) >= set(snapshot), 30)
        got = received_keys(col)
        expected = list(dict.fromkeys(snapshot))
        assert [k for k in got if k in set(expected)] == expected  # all, in order
        events = [k for k in expected if k[0] == "event"]
        assert len(events) >= 4  # on_battery and on_line for both UPS units
        print(f"outage {OUTAGE:.0f} s: {during} published while away, {len(expected)} in all")
        sink = agent.sinks[0]
        assert sink.stats()["dropped"] == 0  # type: ignore[attr-defined]
    finally:
        await agent.stop()


def stored_keys(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT key, payload FROM outbox WHERE sink='mqtt' ORDER BY seq")
        keys = [key_of(topic, bytes(payload)) for topic, payload in rows]
    finally:
        db.close()
    return [k for k in keys if k is not None]


async def test_agent_killed_mid_outage_leaves_its_outbox_to_the_next(
    tmp_path: Path,
    nut_simulator: RunningSimulator,
    mosquitto_factory: Callable[..., Broker],
    mqtt_subscribe: Callable[..., Collector],
    procs: Callable[..., Proc],
) -> None:
    broker = mosquitto_factory(persistent=True)
    col = mqtt_subscribe(broker, f"{P}/#", client_id="outbox-kill-watcher", persistent=True)
    outbox = tmp_path / "outbox.sqlite"
    site = tmp_path / "site.yaml"
    site.write_text(site_yaml(broker, nut_simulator.nut_port, outbox))
    argv = [sys.executable, "-m", "facility_agent.cli", "run", "-c", str(site)]
    first = procs(argv, tmp_path / "agent-1.log")
    await wait_for(col, lambda m: len(received_keys(col)) >= 2, 30)
    await asyncio.to_thread(broker.stop)
    nut_simulator.inject("generator.crank_fail")
    nut_simulator.inject("utility.fail")
    await asyncio.sleep(max(3.0, OUTAGE / 3))
    first.popen.kill()  # no clean stop: what it held is only in the outbox file
    first.popen.wait(5)
    left = stored_keys(outbox)
    assert len(left) > 5, first.output()
    print(f"killed mid-outage with {len(left)} message(s) in the outbox")
    assert any(k[0] == "event" for k in left)
    second = procs(argv, tmp_path / "agent-2.log")
    await asyncio.sleep(2.0)
    await asyncio.to_thread(broker.start)
    await wait_for(col, lambda m: set(received_keys(col)) >= set(left), 30)
    got = received_keys(col)
    assert [k for k in got if k in set(left)] == list(dict.fromkeys(left))
    second.signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.popen.wait, 15) == 0, second.output()
    assert "Traceback" not in first.output() + second.output()
    assert "from before: delivering them first" in second.output()
