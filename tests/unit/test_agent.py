"""The agent's wiring: states published on change and on heartbeat, events in order, clean stop."""

from __future__ import annotations

import asyncio

import pytest

from facility_agent.config.site import MqttConfig, SiteConfig
from facility_agent.core.driver import DeviceConfig, Driver
from facility_agent.core.model import DeviceState, Event, Sample, utcnow
from facility_agent.core.sink import Sink
from facility_agent.runtime import agent as agent_module
from facility_agent.runtime.agent import Agent


class FlagDriver(Driver):
    """Reports whatever status flags the test sets."""

    name = "flag"
    status: tuple[str, ...] = ("OL",)
    closed = 0

    async def poll(self) -> Sample:
        return Sample(self.config.id, utcnow(), FlagDriver.status, {"battery.charge": 100})

    async def close(self) -> None:
        FlagDriver.closed += 1


class RecordingSink(Sink):
    def __init__(self) -> None:
        self.states: list[DeviceState] = []
        self.events: list[Event] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    def publish_state(self, state: DeviceState) -> None:
        self.states.append(state)

    def publish_event(self, event: Event) -> None:
        self.events.append(event)

    async def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True


@pytest.fixture(autouse=True)
def _flag_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    FlagDriver.status = ("OL",)
    FlagDriver.closed = 0
    monkeypatch.setattr(agent_module, "driver_class", lambda name: FlagDriver)


def site(heartbeat: float = 60.0) -> SiteConfig:
    dev = DeviceConfig(id="ups-a", driver="flag", interval=0.05, jitter=0)
    return SiteConfig(
        site="lab1", mqtt=MqttConfig(host="127.0.0.1", heartbeat=heartbeat), devices=[dev]
    )


async def test_state_published_on_change_only_and_events_delivered() -> None:
    sink = RecordingSink()
    agent = Agent(site(), sinks=[sink])
    await agent.start()
    await asyncio.sleep(0.3)
    assert sink.started and len(sink.states) == 1  # many polls, one change
    FlagDriver.status = ("OB", "DISCHRG")
    await asyncio.sleep(0.2)
    FlagDriver.status = ("OL",)
    await asyncio.sleep(0.2)
    await agent.stop()
    assert [s.status for s in sink.states] == [("OL",), ("OB", "DISCHRG"), ("OL",)]
    assert [e.type for e in sink.events] == ["power.on_battery", "power.on_line"]
    assert sink.stopped and FlagDriver.closed == 1


async def test_heartbeat_republishes_unchanged_state() -> None:
    sink = RecordingSink()
    agent = Agent(site(heartbeat=0.2), sinks=[sink])
    await agent.start()
    await asyncio.sleep(1.0)
    await agent.stop()
    # One on the first poll, then about one every 0.2 s although nothing changed.
    assert 3 <= len(sink.states) <= 8
    assert {s.status for s in sink.states} == {("OL",)}


async def test_run_returns_when_stop_is_set() -> None:
    sink = RecordingSink()
    agent = Agent(site(), sinks=[sink])
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert sink.stopped


async def _until(cond: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_replace_outputs_hands_the_new_ones_the_current_states_then_stops_the_old() -> None:
    old, new = RecordingSink(), RecordingSink()
    agent = Agent(site(), sinks=[old])
    await agent.start()
    try:
        await _until(lambda: old.states)
        await agent.replace_outputs([new])
        assert new.started and old.stopped and agent.sinks == [new]
        assert [s.device for s in new.states] == ["ups-a"]  # the current state, at once
        FlagDriver.status = ("OB", "DISCHRG")
        await _until(lambda: new.events)
        assert [e.type for e in new.events] == ["power.on_battery"] and not old.events
    finally:
        await agent.stop()


async def test_add_and_remove_device_on_a_running_agent() -> None:
    sink = RecordingSink()
    agent = Agent(site(), sinks=[sink])
    await agent.start()
    try:
        extra = DeviceConfig(id="ups-b", driver="flag", interval=0.05, jitter=0)
        agent.add_device(extra, FlagDriver(extra))
        await _until(lambda: agent.state.get("ups-b") is not None)
        assert set(agent.pollers) == {"ups-a", "ups-b"}
        await agent.remove_device("ups-b")
        assert set(agent.pollers) == {"ups-a"} and "ups-b" not in agent.drivers
        assert agent.state.get("ups-b") is None and FlagDriver.closed == 1
        polled = agent.pollers["ups-a"].polls
        await _until(lambda: agent.pollers["ups-a"].polls > polled)  # the other one goes on
    finally:
        await agent.stop()
