"""End to end: the simulated site, the agent as its own process (`facility-agent run`), and a
real Mosquitto, watched by a plain MQTT subscriber as any consumer would."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.mosquitto import Broker, Collector, Received, retained
from tests.fixtures.procs import Proc

INTERVAL = 1.0


def events_of(col: Collector, kind: str, device: str, after: float = 0.0) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for msg in col.snapshot("facility/lab1/events"):
        ev = json.loads(msg.payload)
        if ev["type"] == kind and ev["device"] == device:
            out.append(ev)
    return out


def write_site(path: Path, broker: Broker, nut_port: int) -> Path:
    site = {
        "site": "lab1",
        "mqtt": {"host": broker.host, "port": broker.port},
        "devices": [
            {
                "id": ups,
                "driver": "nut",
                "host": "127.0.0.1",
                "port": nut_port,
                "ups": ups,
                "interval": INTERVAL,
            }
            for ups in ("ups-a", "ups-b")
        ],
    }
    path.write_text(yaml.safe_dump(site))
    return path


@pytest.fixture
def watched_agent(
    tmp_path: Path,
    nut_simulator: RunningSimulator,
    mosquitto_broker: Broker,
    mqtt_subscribe: Callable[..., Collector],
    procs: Callable[..., Proc],
) -> tuple[Collector, Proc]:
    """A subscriber to all of lab1, then `facility-agent run` on a site file for the simulator's
    two UPS units, as its own process."""
    col = mqtt_subscribe(mosquitto_broker, "facility/lab1/#")
    site = write_site(tmp_path / "site.yaml", mosquitto_broker, nut_simulator.nut_port)
    argv = [sys.executable, "-m", "facility_agent.cli", "run", "-c", str(site)]
    return col, procs(argv, tmp_path / "agent.log")


async def wait_for(
    col: Collector, check: Callable[[list[Received]], bool], timeout: float
) -> float:
    """Seconds until `check` holds; waits in a thread so the in-process simulator keeps serving."""
    started = time.monotonic()
    await asyncio.to_thread(col.wait_for, check, timeout)
    return time.monotonic() - started


def has_event(kind: str, device: str) -> Callable[[list[Received]], bool]:
    def check(msgs: list[Received]) -> bool:
        for m in msgs:
            if m.topic == "facility/lab1/events":
                ev = json.loads(m.payload)
                if ev["type"] == kind and ev["device"] == device:
                    return True
        return False

    return check


def state_has(device: str, flag: str) -> Callable[[list[Received]], bool]:
    def check(msgs: list[Received]) -> bool:
        states = [m for m in msgs if m.topic == f"facility/lab1/{device}/state"]
        return bool(states) and flag in json.loads(states[-1].payload)["status"]

    return check


async def test_utility_outage_end_to_end(
    nut_simulator: RunningSimulator, mosquitto_broker: Broker, watched_agent: tuple[Collector, Proc]
) -> None:
    col, agent = watched_agent
    await wait_for(col, state_has("ups-a", "OL"), 20)
    await wait_for(col, state_has("ups-b", "OL"), 5)
    status = retained(mosquitto_broker, "facility/lab1/agent/status")
    assert status is not None and status.payload == b"online" and status.retain

    nut_simulator.inject("generator.crank_fail")
    nut_simulator.inject("utility.fail")
    took = await wait_for(col, has_event("power.on_battery", "ups-a"), INTERVAL + 5)
    assert took < INTERVAL + 1.0, f"power.on_battery after {took:.2f} s"
    await wait_for(col, has_event("power.on_battery", "ups-b"), 2)
    await wait_for(col, state_has("ups-a", "OB"), 2)
    ev = events_of(col, "power.on_battery", "ups-a")[0]
    assert ev["severity"] == "critical" and ev["site"] == "lab1"
    assert ev["message"].startswith("ups-a is on battery (charge ")
    assert set(ev) >= {"id", "ts", "site", "device", "type", "severity", "message"}

    nut_simulator.inject("utility.restore")
    took = await wait_for(col, has_event("power.on_line", "ups-a"), INTERVAL + 5)
    assert took < INTERVAL + 1.0, f"power.on_line after {took:.2f} s"
    await wait_for(col, state_has("ups-b", "OL"), 3)
    # Each transition was announced once, not once per poll.
    assert len(events_of(col, "power.on_battery", "ups-a")) == 1
    assert len(events_of(col, "power.on_line", "ups-a")) == 1
    state = json.loads(col.snapshot("facility/lab1/ups-a/state")[-1].payload)
    assert state["comm"] == "ok" and state["driver"] == "nut"
    assert isinstance(state["metrics"]["battery.charge"], int | float)
    assert all(m.retain is False for m in col.snapshot("facility/lab1/events"))

    agent.signal(signal.SIGTERM)
    assert await asyncio.to_thread(agent.popen.wait, 15) == 0, agent.output()
    status = retained(mosquitto_broker, "facility/lab1/agent/status")
    assert status is not None and status.payload == b"offline"
    assert "Traceback" not in agent.output()


async def test_comm_loss_and_restore_end_to_end(
    nut_simulator: RunningSimulator, mosquitto_broker: Broker, watched_agent: tuple[Collector, Proc]
) -> None:
    col, agent = watched_agent
    await wait_for(col, state_has("ups-b", "OL"), 20)
    nut_simulator.inject("ups.comm_dead", "ups-b")
    # Lost after lost_after (3) missed polls at 1 s.
    await wait_for(col, has_event("device.comm_lost", "ups-b"), 3 * INTERVAL + 5)
    ev = events_of(col, "device.comm_lost", "ups-b")[0]
    assert "stale" in ev["message"].lower()
    lost = json.loads(col.snapshot("facility/lab1/ups-b/state")[-1].payload)
    assert lost["comm"] == "lost" and lost["reason"]
    # The other UPS kept being polled: no event for it, and its state stays ok.
    assert not events_of(col, "device.comm_lost", "ups-a")
    nut_simulator.inject("ups.comm_restore", "ups-b")
    await wait_for(col, has_event("device.comm_restored", "ups-b"), 10)
    agent.signal(signal.SIGINT)
    assert await asyncio.to_thread(agent.popen.wait, 15) == 0, agent.output()
