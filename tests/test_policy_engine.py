"""The policy engine inside a real agent, with devices whose power the test controls.

Hooks are real processes (argv, JSON on stdin); the journal is a real SQLite file. The devices
are in-process drivers here so each rule can be driven precisely; the simulator and real NUT
take over in test_policy_site.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from facility_agent.config.site import parse_site
from facility_agent.core.driver import ActionError, DeviceConfig
from facility_agent.core.model import Event
from facility_agent.runtime import agent as agent_module
from facility_agent.runtime.agent import Agent
from tests.fixtures.world import WORLD
from tests.fixtures.world import WorldDriver as BaseWorldDriver

ACTIONS: list[tuple[str, str]] = []


class WorldDriver(BaseWorldDriver):
    """Actions change WORLD: power actions switch the server, a refusing device refuses."""

    async def run_action(self, action: str, params: Mapping[str, str] | None = None) -> str:
        ACTIONS.append((self.config.id, action))
        dev = WORLD[self.config.id]
        if dev.get("refuse"):
            raise ActionError(f"{self.config.id} refused {action}")
        if action in ("soft_off", "hard_off"):
            dev["status"] = "POWER_OFF"
        elif action == "power_on":
            dev["status"] = "POWER_ON"
        return f"{action} done"


@pytest.fixture(autouse=True)
def _world(monkeypatch: pytest.MonkeyPatch) -> None:
    WORLD.clear()
    ACTIONS.clear()
    WORLD.update(
        {
            "ups-a": {"status": "OL", "metrics": {"battery.charge": 100, "battery.runtime": 3000}},
            "ups-b": {"status": "OL", "metrics": {"battery.charge": 100, "battery.runtime": 3000}},
            "gen-1": {"status": "", "metrics": {"generator.state": "stopped"}},
            "srv-01": {"status": "POWER_ON", "metrics": {}},
        }
    )
    monkeypatch.setattr(agent_module, "driver_class", lambda name: WorldDriver)


def hook_script(tmp_path: Path, name: str, sleep: float = 0.0) -> list[str]:
    """A hook that appends its argv, its stdin (the event JSON) and its env to a file."""
    script = tmp_path / f"{name}.py"
    script.write_text(
        "import json, os, sys, time\n"
        f"time.sleep({sleep})\n"
        "data = sys.stdin.read()\n"
        f"with open({str(tmp_path / (name + '.log'))!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'stdin': data,"
        " 'type': os.environ.get('FACILITY_EVENT_TYPE'),"
        " 'device': os.environ.get('FACILITY_DEVICE')}) + '\\n')\n"
    )
    return [sys.executable, str(script), name]


def hook_log(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    path = tmp_path / f"{name}.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def make_site(tmp_path: Path, **overrides: Any) -> Any:
    devices = [
        {"id": d, "driver": "world", "interval": 0.05, "jitter": 0, "allow_writes": True}
        for d in ("ups-a", "ups-b", "gen-1", "srv-01")
    ]
    site: dict[str, Any] = {
        "site": "lab1",
        "state_dir": str(tmp_path / "state"),
        "devices": devices,
        "groups": [
            {"id": "ups", "kind": "power", "members": ["ups-a", "ups-b"], "min": 1, "hold": 0.1}
        ],
        "shutdown": {
            "group": "ups",
            "triggers": {
                "hold": 0.1,
                "runtime_margin": None,
                "generator_not_running": {"device": "gen-1", "after": 0.6},
                "low_battery": {"hold": 0.2},
            },
            "cancel_after": 0.3,
            "cooldown": 60,
            "expected_duration": 5,
            "stages": [
                {"name": "apps", "steps": [{"run": hook_script(tmp_path, "apps"), "timeout": 5}]},
                {
                    "name": "servers",
                    "steps": [{"device": "srv-01", "action": "soft_off", "undo": "power_on"}],
                },
                {"name": "pause", "steps": [{"wait": 0.5}]},
                {
                    "name": "ups",
                    "no_return": True,
                    "steps": [
                        {"device": "ups-a", "action": "shutdown.return"},
                        {"device": "ups-b", "action": "shutdown.return"},
                    ],
                },
            ],
        },
        "recovery": {"stable_for": 0.3, "min_charge": 50, "stages": []},
    }
    site.update(overrides)
    return parse_site(
        yaml.safe_dump(site), "site.yaml", env={}, drivers=lambda: {"world": WorldDriver}
    )


class Recorder:
    def __init__(self, agent: Agent) -> None:
        self.events: list[Event] = []
        agent.on_event(self.events.append)

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    async def wait(self, kind: str, timeout: float = 10.0) -> Event:
        for _ in range(int(timeout / 0.02)):
            for e in self.events:
                if e.type == kind:
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {kind} event; got {self.types()}")


def outage(status: str = "OB DISCHRG") -> None:
    WORLD["ups-a"]["status"] = status
    WORLD["ups-b"]["status"] = status


def power_back() -> None:
    WORLD["ups-a"]["status"] = "OL CHRG"
    WORLD["ups-b"]["status"] = "OL CHRG"


async def started(tmp_path: Path, **overrides: Any) -> tuple[Agent, Recorder]:
    agent = Agent(make_site(tmp_path, **overrides), sinks=[])
    rec = Recorder(agent)
    await agent.start()
    await asyncio.sleep(0.3)
    return agent, rec


@asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Agent, Recorder]]:
    """`started`, and the agent stopped afterwards whatever the test did."""
    agent, rec = await started(tmp_path, **overrides)
    try:
        yield agent, rec
    finally:
        await agent.stop()


async def test_generator_fails_to_crank_shutdown_runs_in_order(tmp_path: Path) -> None:
    async with running(tmp_path) as (agent, rec):
        outage()
        ev = await rec.wait("shutdown.started", 5)
        assert "generator gen-1 not running" in ev.message and ev.severity == "critical"
        await rec.wait("shutdown.completed", 10)
        assert ACTIONS == [
            ("srv-01", "soft_off"),
            ("ups-a", "shutdown.return"),
            ("ups-b", "shutdown.return"),
        ]
        apps = hook_log(tmp_path, "apps")
        assert len(apps) == 1 and json.loads(apps[0]["stdin"])["type"] == "shutdown.started"
        steps = [e for e in rec.events if e.type == "shutdown.step"]
        assert len(steps) == 5 and all(e.data["ok"] for e in steps)
        run = agent.policy.journal.last_run("shutdown")  # type: ignore[union-attr]
        assert run is not None and run.state == "completed"
        # The UPS outputs going off, as the plan asked, is not a new outage: no second plan.
        WORLD["ups-a"]["status"] = "OB OFF"
        WORLD["ups-b"]["status"] = "OL OFF"
        WORLD["ups-a"]["metrics"]["battery.runtime"] = 0
        await asyncio.sleep(1.0)
        assert rec.types().count("shutdown.started") == 1


async def power_back_mid_plan(tmp_path: Path) -> tuple[Agent, Recorder]:
    """An agent whose plan has turned the server off and then waits 3 s, when the power returns
    (the agent is stopped by the caller)."""
    shutdown = make_site(tmp_path).shutdown.model_dump()
    shutdown["stages"][2]["steps"] = [{"wait": 3}]  # time for the power to come back
    agent, rec = await started(tmp_path, shutdown=shutdown)
    try:
        outage()
        await rec.wait("shutdown.started", 5)
        for _ in range(200):
            if ("srv-01", "soft_off") in ACTIONS:
                break
            await asyncio.sleep(0.02)
        power_back()
    except BaseException:
        await agent.stop()
        raise
    return agent, rec


async def test_power_back_mid_shutdown_cancels_and_recovers(tmp_path: Path) -> None:
    agent, rec = await power_back_mid_plan(tmp_path)
    try:
        cancelled = await rec.wait("shutdown.cancelled", 5)
        assert "point of no return" in cancelled.message
        await rec.wait("recovery.completed", 10)
        assert ("srv-01", "power_on") in ACTIONS
        assert ("ups-a", "shutdown.return") not in ACTIONS  # never reached
        assert WORLD["srv-01"]["status"] == "POWER_ON"
    finally:
        await agent.stop()


async def test_flapping_power_never_starts_a_shutdown(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, rec):
        for _ in range(20):  # 20 flaps, each shorter than the generator's 0.6 s allowance
            outage()
            await asyncio.sleep(0.3)
            power_back()
            await asyncio.sleep(0.15)
        await asyncio.sleep(0.5)
        assert "shutdown.started" not in rec.types()
        assert not ACTIONS


async def test_no_healthy_member_left_is_redundancy_lost(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, rec):
        WORLD["ups-b"]["status"] = "OB DISCHRG"
        ev = await rec.wait("redundancy.degraded", 5)
        assert ev.severity == "warning"
        WORLD["ups-a"]["status"] = "OB DISCHRG"
        lost = await rec.wait("redundancy.lost", 5)
        assert lost.device == "ups" and lost.severity == "critical"
        assert sorted(lost.data["down"]) == ["ups-a", "ups-b"] and "none of 2" in lost.message
        assert rec.types().count("redundancy.degraded") == 1
        WORLD["ups-a"]["status"] = "OL"
        WORLD["ups-b"]["status"] = "OL"
        await rec.wait("redundancy.restored", 5)


async def test_one_ups_failing_degrades_runs_hook_no_shutdown(tmp_path: Path) -> None:
    hooks = [{"events": ["redundancy.*"], "run": hook_script(tmp_path, "failover"), "timeout": 5}]
    async with running(tmp_path, hooks=hooks) as (agent, rec):
        WORLD["ups-b"]["status"] = "OB DISCHRG"
        ev = await rec.wait("redundancy.degraded", 5)
        assert ev.device == "ups" and ev.data["down"] == ["ups-b"] and ev.severity == "warning"
        await rec.wait("hook.ok", 5)
        ran = hook_log(tmp_path, "failover")
        assert ran[0]["type"] == "redundancy.degraded" and ran[0]["device"] == "ups"
        assert json.loads(ran[0]["stdin"])["data"]["group"] == "ups"
        await asyncio.sleep(1.0)
        assert "shutdown.started" not in rec.types()
        group_state = agent.state.get("group-ups")
        assert group_state is not None and group_state.status == ("DEGRADED",)
        WORLD["ups-b"]["status"] = "OL"
        await rec.wait("redundancy.restored", 5)


async def test_spurious_low_battery_warns_and_does_not_shut_down(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, rec):
        WORLD["ups-a"]["status"] = "OL LB"
        ev = await rec.wait("power.low_battery_unconfirmed", 5)
        assert ev.severity == "warning" and ev.device == "ups-a"
        await asyncio.sleep(1.0)
        assert "shutdown.started" not in rec.types()


async def test_low_battery_on_battery_starts_at_once(tmp_path: Path) -> None:
    shutdown = make_site(tmp_path).shutdown.model_dump()
    shutdown["triggers"]["generator_not_running"] = None
    async with running(tmp_path, shutdown=shutdown) as (_, rec):
        outage("OB LB")
        ev = await rec.wait("shutdown.started", 5)
        assert "low battery on ups-a, ups-b" in ev.message


async def test_hung_hook_times_out_and_plan_goes_on(tmp_path: Path) -> None:
    shutdown = make_site(tmp_path).shutdown.model_dump()
    shutdown["stages"][0]["steps"] = [
        {"run": hook_script(tmp_path, "hang", sleep=60), "timeout": 0.5}
    ]
    async with running(tmp_path, shutdown=shutdown) as (_, rec):
        outage()
        await rec.wait("shutdown.completed", 15)
        first = next(e for e in rec.events if e.type == "shutdown.step")
        assert not first.data["ok"] and "timeout" in first.message
        assert ("srv-01", "soft_off") in ACTIONS


async def test_device_strings_reach_hooks_only_as_data(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    evil = f"$(touch {canary}); touch {canary} ; `touch {canary}`"
    hooks = [{"events": ["*"], "run": hook_script(tmp_path, "all"), "timeout": 5}]
    async with running(tmp_path, hooks=hooks) as (agent, rec):
        agent.emit(Event("lab1", "ups-a", "power.on_battery", "critical", f"model {evil}"))  # type: ignore[arg-type]
        await rec.wait("hook.ok", 5)
        ran = [r for r in hook_log(tmp_path, "all") if r["type"] == "power.on_battery"]
        assert ran and ran[0]["argv"] == ["all"]
        assert evil in json.loads(ran[0]["stdin"])["message"]
        assert not canary.exists()


def test_policy_cross_references_are_checked(tmp_path: Path) -> None:
    from facility_agent.config.site import ConfigError

    bad = {
        "site": "lab1",
        "devices": [{"id": "ups-a", "driver": "nut", "host": "h", "ups": "u"}],
        "groups": [{"id": "ups", "members": ["ups-a", "ups-z"]}],
        "shutdown": {
            "group": "nope",
            "stages": [{"name": "s", "steps": [{"device": "srv-9", "action": "x"}]}],
        },
    }
    with pytest.raises(ConfigError) as info:
        parse_site(yaml.safe_dump(bad), "site.yaml", env={})
    text = info.value.render()
    assert "groups[0].members[1]" in text and "no device 'ups-z'" in text
    assert "shutdown.group" in text and "no group 'nope'" in text
    assert "shutdown.stages[0].steps[0].device" in text


def test_step_must_be_one_kind() -> None:
    from facility_agent.config.policy import StepConfig

    with pytest.raises(ValueError, match="exactly one of"):
        StepConfig.model_validate({"run": ["x"], "wait": 1})
    DeviceConfig(id="x", driver="y")  # the base model still validates alone


async def test_uplink_lost_degrades_network_group_and_runs_failover_hook(tmp_path: Path) -> None:
    WORLD["box"] = {
        "status": "",
        "metrics": {"uplink.wan-1.status": "up", "uplink.wan-2.status": "up"},
    }
    devices = [
        {"id": d, "driver": "world", "interval": 0.05, "jitter": 0, "allow_writes": True}
        for d in ("ups-a", "ups-b", "gen-1", "srv-01", "box")
    ]
    groups = [
        {"id": "ups", "kind": "power", "members": ["ups-a", "ups-b"], "min": 1, "hold": 0.1},
        {
            "id": "uplinks",
            "kind": "network",
            "min": 2,
            "hold": 0.1,
            "members": ["box:uplink.wan-1.status", "box:uplink.wan-2.status"],
        },
    ]
    hooks = [
        {
            "events": ["redundancy.*"],
            "only": ["uplinks"],
            "run": hook_script(tmp_path, "wan"),
            "timeout": 5,
        }
    ]
    site = make_site(tmp_path, devices=devices, groups=groups, hooks=hooks)
    agent = Agent(site, sinks=[])
    rec = Recorder(agent)
    await agent.start()
    try:
        await asyncio.sleep(0.4)
        WORLD["box"]["metrics"]["uplink.wan-2.status"] = "down"
        ev = await rec.wait("redundancy.degraded", 5)
        assert ev.device == "uplinks" and ev.severity == "critical"  # below min 2: lost
        await rec.wait("hook.ok", 5)
        ran = hook_log(tmp_path, "wan")
        assert len(ran) == 1 and ran[0]["type"] == "redundancy.degraded"
        assert json.loads(ran[0]["stdin"])["data"]["down"] == ["box:uplink.wan-2.status"]
        assert "shutdown.started" not in rec.types()  # network trouble never powers off a rack
    finally:
        await agent.stop()


async def test_cancelled_plan_journals_and_says_so_even_when_the_disk_is_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancelled plan's clean-up awaits its journal write; the engine, ticking on while
    the power stays back, must not cancel it a second time in the middle of that write (the
    run would stay open, no `shutdown.cancelled` would come, and the engine would ask again
    on every tick)."""
    from facility_agent.policy import journal as journal_module

    real = journal_module.Journal._execute

    def slow(self: Any, sql: str, args: tuple[Any, ...]) -> None:
        if sql.startswith("UPDATE runs"):
            import time

            time.sleep(0.6)  # on the journal's writer thread: a slow fsync
        real(self, sql, args)

    monkeypatch.setattr(journal_module.Journal, "_execute", slow)
    agent, rec = await power_back_mid_plan(tmp_path)
    try:
        await rec.wait("shutdown.cancelled", 8)
        run = agent.policy.journal.last_run("shutdown")  # type: ignore[union-attr]
        assert run is not None and run.state == "cancelled"
        await rec.wait("recovery.completed", 10)
    finally:
        await agent.stop()
