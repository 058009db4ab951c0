"""The policy treats unknown as unknown: a UPS card's -1 ("I don't know") for its runtime never
starts a shutdown, a trigger on an unknown input neither fires nor clears and says it is blind,
and a real LB flag still starts the plan.

The UPS is real net-snmp snmpd serving UPS-MIB through the pass_persist helper, read by the SNMP
driver with the ups-mib profile, inside a real agent.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from facility_agent.config.policy import GroupConfig
from facility_agent.config.site import parse_site
from facility_agent.core.model import DeviceState, Event
from facility_agent.policy.evaluate import Blind, GroupEvaluator, unknown_inputs
from facility_agent.runtime.agent import Agent

from .fixtures.snmp import Snmpd

#: UPS-MIB (upsObjects.) values: the card answers -1 for its runtime and charge.
UNKNOWN_RUNTIME = {"2.3.0": ("integer", -1), "2.4.0": ("integer", -1)}
#: upsOutputSource battery(5) with upsBatteryStatus batteryNormal(2): OB, no LB.
ON_BATTERY = {"4.1.0": ("integer", 5), "2.1.0": ("integer", 2)}
#: upsOutputSource battery(5) with upsBatteryStatus batteryLow(3): OB and LB.
ON_BATTERY_LOW = {"4.1.0": ("integer", 5), "2.1.0": ("integer", 3)}


def site(tmp_path: Path, port: int) -> Any:
    hook = tmp_path / "apps.py"
    hook.write_text("import sys\nsys.stdin.read()\n")
    data: dict[str, Any] = {
        "site": "lab1",
        "state_dir": str(tmp_path / "state"),
        "devices": [
            {
                "id": "ups-a",
                "driver": "snmp",
                "host": "127.0.0.1",
                "port": port,
                "profile": "ups-mib",
                "interval": 0.1,
                "jitter": 0,
            }
        ],
        "groups": [{"id": "ups", "kind": "power", "members": ["ups-a"], "min": 1, "hold": 0.1}],
        "shutdown": {
            "group": "ups",
            # runtime_margin (default 120 s) + expected_duration 5 s: any runtime below 125 s
            # fires after `hold`; -1 minutes used to read as -60 s.
            "triggers": {"hold": 0.1, "low_battery": {"hold": 0.1}, "stale_after": 0.6},
            "cooldown": 60,
            "expected_duration": 5,
            "stages": [{"name": "apps", "steps": [{"run": [sys.executable, str(hook)]}]}],
        },
    }
    return parse_site(yaml.safe_dump(data), "site.yaml", env={})


class Seen:
    def __init__(self, agent: Agent) -> None:
        self.events: list[Event] = []
        agent.on_event(self.events.append)

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]

    async def wait(self, kind: str, timeout: float = 10.0) -> Event:
        for _ in range(int(timeout / 0.05)):
            found = self.of(kind)
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind}; got {[e.type for e in self.events]}")


@asynccontextmanager
async def agent_on(
    tmp_path: Path, snmpd: Snmpd, values: dict[str, tuple[str, object]]
) -> AsyncIterator[tuple[Agent, Seen, DeviceState]]:
    """An agent reading snmpd serving `values`, with its first on-line state of the UPS;
    stopped, and snmpd put back, afterwards."""
    snmpd.set_ups(values)
    agent = Agent(site(tmp_path, snmpd.port), sinks=[])
    seen = Seen(agent)
    await agent.start()
    try:
        yield agent, seen, await wait_state(agent, lambda s: "OL" in s.status)
    finally:
        await agent.stop()
        snmpd.set_ups()


async def wait_state(agent: Agent, check: Any, timeout: float = 10.0) -> DeviceState:
    for _ in range(int(timeout / 0.05)):
        st = agent.state.get("ups-a")
        if st is not None and check(st):
            return st
        await asyncio.sleep(0.05)
    raise AssertionError(f"state never matched: {agent.state.get('ups-a')}")


async def test_on_line_power_a_minus_one_runtime_starts_no_plan(
    tmp_path: Path, snmpd: Snmpd
) -> None:
    async with agent_on(tmp_path, snmpd, UNKNOWN_RUNTIME) as (_, seen, st):
        assert st.unknown == ("battery.charge", "battery.runtime")
        assert "battery.runtime" not in st.metrics and "battery.charge" not in st.metrics
        assert st.payload("lab1")["unknown"] == ["battery.charge", "battery.runtime"]
        blind = await seen.wait("policy.trigger_blind", 5)
        assert blind.data["trigger"] == "runtime"
        assert blind.data["inputs"] == ["ups-a battery.runtime"]
        await asyncio.sleep(0.5)
        assert not seen.of("shutdown.started")
        assert len(seen.of("policy.trigger_blind")) == 1  # once per spell; no recovery section
        # The card reads again: the trigger sees again.
        snmpd.set_ups()
        sees = await seen.wait("policy.trigger_sees", 5)
        assert sees.data["trigger"] == "runtime"


async def test_on_battery_an_unknown_runtime_holds_the_runtime_trigger(
    tmp_path: Path, snmpd: Snmpd
) -> None:
    async with agent_on(tmp_path, snmpd, UNKNOWN_RUNTIME) as (agent, seen, _):
        snmpd.set_ups({**UNKNOWN_RUNTIME, **ON_BATTERY})
        await wait_state(agent, lambda s: "OB" in s.status)
        # Before ranges, -1 minutes was -60 s, below the 125 s limit: the plan started after
        # the 0.1 s hold. Now the trigger holds and says it is blind.
        await asyncio.sleep(1.2)
        assert not seen.of("shutdown.started")
        assert seen.of("policy.trigger_blind")
        # A real reading below the limit fires it.
        snmpd.set_ups({**ON_BATTERY, "2.3.0": ("integer", 1)})
        started = await seen.wait("shutdown.started", 5)
        assert "runtime 60 s is below 125 s" in started.message


async def test_on_battery_minus_one_runtime_and_a_real_lb_starts_the_plan_through_the_flag(
    tmp_path: Path, snmpd: Snmpd
) -> None:
    async with agent_on(tmp_path, snmpd, UNKNOWN_RUNTIME) as (_, seen, _):
        snmpd.set_ups({**UNKNOWN_RUNTIME, **ON_BATTERY_LOW})
        started = await seen.wait("shutdown.started", 5)
        assert "low battery on ups-a" in started.message
        assert "runtime" not in started.message


# ---- the pure rules ----------------------------------------------------------------------


def state(device: str, status: str, unknown: tuple[str, ...] = (), **metrics: Any) -> DeviceState:
    return DeviceState(
        device=device,
        driver="x",
        ts=datetime.now(UTC),
        comm="ok",
        status=tuple(status.split()),
        metrics=metrics,
        unknown=unknown,
    )


def test_blind_is_raised_once_after_stale_after_and_cleared_once() -> None:
    b = Blind(2.0)
    assert b.update(True, 0.0) is None
    assert b.update(True, 1.9) is None
    assert b.update(True, 2.0) == "blind"
    assert b.update(True, 9.0) is None
    assert b.update(False, 9.5) == "sees"
    assert b.update(False, 10.0) is None
    assert b.update(True, 11.0) is None  # a new spell starts its own clock
    assert b.update(False, 11.5) is None  # never raised: nothing to clear


def test_unknown_inputs_name_device_and_metric() -> None:
    group = GroupConfig.model_validate({"id": "ups", "kind": "power", "members": ["a", "b"]})
    states = {
        "a": state("a", "OL", ("battery.charge", "battery.runtime")),
        "b": state("b", "OFF", ("battery.runtime",)),  # switched off: its runtime is no input
        "gen": state("gen", "", ("generator.state",)),
    }
    got = unknown_inputs(group, states, [], ("gen", "generator.state"))
    assert got == {
        "runtime": ["a battery.runtime"],
        "low_battery": [],
        "generator": ["gen generator.state"],
        "recovery": ["a battery.charge"],
    }


def test_a_member_read_through_an_unknown_metric_keeps_its_count() -> None:
    group = GroupConfig.model_validate(
        {"id": "net", "kind": "network", "members": ["sw:uplink.wan.status"], "hold": 0.5}
    )
    ev = GroupEvaluator(group)
    assert ev.update({"sw": state("sw", "", (), **{"uplink.wan.status": "up"})}, 0.0).healthy == 1
    unknown = {"sw": state("sw", "", ("uplink.wan.status",))}
    for t in (1.0, 2.0, 3.0):
        assert ev.update(unknown, t).healthy == 1  # neither down nor up: held
    down = {"sw": state("sw", "", (), **{"uplink.wan.status": "down"})}
    assert ev.update(down, 4.0).healthy == 1  # a known "down" starts the hold ...
    assert ev.update(down, 4.6).healthy == 0  # ... and counts once it held
