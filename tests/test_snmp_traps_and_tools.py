"""net-snmp's own tools against our simulator, traps both ways, and the agent's trap wiring.

- snmpget / snmpwalk / snmpbulkwalk read every object of every SNMP profile from the simulator;
- snmptrap (v1, v2c) and snmpinform (v2c, v3) reach our listener, which turns them into events;
- snmptrapd receives the simulator's traps when the model changes;
- an agent with a `traps:` section polls the sender at once.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from facility_agent.config.site import parse_site
from facility_agent.core.model import Event
from facility_agent.drivers.snmp.profile import bundled_names, load_profile
from facility_agent.drivers.snmp.traps import SnmpDevice, TrapListener
from facility_agent.drivers.snmp.traps_config import TrapsConfig, TrapUser
from facility_agent.runtime.agent import Agent
from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.procs import free_port, require_binary
from tests.fixtures.snmp import Snmptrapd, client_env

pytestmark = pytest.mark.peer

COMMUNITY_OF_KIND = {"ups": "ups-a", "pdu": "pdu-a", "ats": "ats-1", "switch": "switch"}
#: The profiles the simulator's SNMP agent serves; the other families are proven on recordings of
#: real units (tests/test_snmp_recordings.py).
SIMULATED = ("apc-powernet-ups", "apc-rats", "apc-rpdu2", "eaton-epdu", "if-mib", "ups-mib")


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=20)


async def test_net_snmp_tools_read_every_profile_object_from_the_simulator(
    make_simulator: Callable[..., Awaitable[RunningSimulator]], tmp_path: Path
) -> None:
    require_binary("snmpget")
    sim = await make_simulator(nut_port=None, snmp_port=0)
    assert sim.snmp is not None
    target = f"127.0.0.1:{sim.snmp.port}"
    env = client_env(tmp_path)
    checked = 0
    assert set(SIMULATED) <= set(bundled_names())
    for name in SIMULATED:
        profile = load_profile(name)
        community = COMMUNITY_OF_KIND[profile.kind]
        scalars = [
            "." + ".".join(map(str, profile.resolve(c.oid))) for c in profile.metrics.values()
        ]
        out = await asyncio.to_thread(
            run, ["snmpget", "-v2c", "-c", community, "-On", "-m", "", target, *scalars], env
        )
        assert out.returncode == 0, (name, out.stderr)
        assert "No Such" not in out.stdout, (name, out.stdout)
        assert out.stdout.count("\n") == len(scalars)
        checked += len(scalars)
        for table in profile.tables.values():
            for i, col in enumerate(table.columns.values()):
                base = "." + ".".join(map(str, profile.resolve(col.oid)))
                tool = ["snmpbulkwalk", "-Cr20"] if i % 2 == 0 else ["snmpwalk"]
                out = await asyncio.to_thread(
                    run, [*tool, "-v2c", "-c", community, "-On", "-m", "", target, base], env
                )
                assert out.returncode == 0 and out.stdout.strip(), (name, base, out.stderr)
                assert "No Such" not in out.stdout
                checked += out.stdout.count("\n")
    # v1 GETNEXT walks work too, and an unknown community gets no answer.
    out = await asyncio.to_thread(
        run, ["snmpwalk", "-v1", "-c", "switch", "-On", "-m", "", target, ".1.3.6.1.2.1.2"], env
    )
    assert out.returncode == 0 and "ifDescr" not in out.stdout and '"wan-1"' in out.stdout
    out = await asyncio.to_thread(
        run,
        ["snmpget", "-v2c", "-c", "nope", "-t", "0.3", "-r", "0", target, ".1.3.6.1.2.1.1.5.0"],
        env,
    )
    assert out.returncode != 0 and "Timeout" in out.stderr
    assert checked > 100


def _listener(events: list[Event], polled: list[str], port: int, **cfg: Any) -> TrapListener:
    config = TrapsConfig(listen=f"127.0.0.1:{port}", **cfg)
    devices = [SnmpDevice("ups-a", "127.0.0.1", "ups-mib"), SnmpDevice("sw", "127.0.0.1", "if-mib")]
    return TrapListener(config, "lab", devices, events.append, polled.append)


async def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.02)


async def test_snmptrap_v1_v2c_and_informs_v2c_v3_become_events(tmp_path: Path) -> None:
    require_binary("snmptrap")
    events: list[Event] = []
    polled: list[str] = []
    port = free_port(__import__("socket").SOCK_DGRAM)
    user = TrapUser(
        user="trapper",
        auth_protocol="SHA",
        auth_key=SecretStr("trap-auth-123"),
        priv_protocol="AES",
        priv_key=SecretStr("trap-priv-456"),
    )
    listener = _listener(events, polled, port, users=[user])
    await listener.start()
    env = client_env(tmp_path)
    target = f"127.0.0.1:{port}"
    v3 = ["-v3", "-l", "authPriv", "-u", "trapper", "-a", "SHA", "-A", "trap-auth-123"]
    v3 += ["-x", "AES", "-X", "trap-priv-456"]

    def inform(auth: list[str], oid: str) -> list[str]:
        """An inform with no varbinds, acknowledged within 2 s or failed (no retry)."""
        return ["snmpinform", *auth, "-t", "2", "-r", "0", target, "", oid]

    try:
        sends = [
            # v2c upsTrapOnBattery
            [
                "snmptrap",
                "-v2c",
                "-c",
                "public",
                target,
                "",
                ".1.3.6.1.2.1.33.2.0.1",
                ".1.3.6.1.2.1.33.1.2.3.0",
                "i",
                "12",
            ],
            # v1 linkDown (generic trap 2)
            [
                "snmptrap",
                "-v1",
                "-c",
                "public",
                target,
                ".1.3.6.1.4.1.8072",
                "127.0.0.1",
                "2",
                "0",
                "",
                ".1.3.6.1.2.1.2.2.1.1.2",
                "i",
                "2",
            ],
            # v2c inform: APC powerRestored
            inform(["-v2c", "-c", "public"], ".1.3.6.1.4.1.318.0.9"),
            # v3 authPriv inform: linkUp
            inform(v3, ".1.3.6.1.6.3.1.1.5.4"),
            # wrong community: dropped without an event
            ["snmptrap", "-v2c", "-c", "wrong", target, "", ".1.3.6.1.2.1.33.2.0.1"],
        ]
        for argv in sends:
            out = await asyncio.to_thread(run, argv, env)
            assert out.returncode == 0, (argv, out.stderr)
        await _wait(lambda: len(events) >= 4)
        await asyncio.sleep(0.2)
    finally:
        await listener.stop()
    kinds = [e.type for e in events]
    assert kinds == ["trap.on_battery", "trap.link_down", "trap.power_restored", "trap.link_up"]
    assert events[0].device == "ups-a" and events[1].device == "sw"
    assert events[0].severity == "critical"
    assert events[0].data["varbinds"]["1.3.6.1.2.1.33.1.2.3.0"] == "12"
    assert polled[:2] == ["ups-a", "sw"]
    assert listener.stats.received == 4


async def test_trap_flood_is_limited_and_counted() -> None:
    events: list[Event] = []
    polled: list[str] = []
    listener = _listener(events, polled, 0, rate=5, burst=10)
    trap = [((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), (1, 3, 6, 1, 6, 3, 1, 1, 5, 3))]
    for _ in range(1000):
        listener.handle("127.0.0.1", trap)
    assert listener.stats.received == 1000
    assert 900 <= listener.stats.dropped <= 990
    floods = [e for e in events if e.type == "trap.flood"]
    assert len(floods) == 1 and "dropping" in floods[0].message
    assert len([e for e in events if e.type == "trap.link_down"]) == 1000 - listener.stats.dropped
    # Another sender is not throttled by the first one's flood.
    listener.handle("10.9.9.9", trap)
    assert events[-1].type == "trap.link_down" and events[-1].device == "traps"


async def test_snmptrapd_receives_the_simulators_traps(
    make_simulator: Callable[..., Awaitable[RunningSimulator]], snmptrapd: Snmptrapd
) -> None:
    sim = await make_simulator(
        nut_port=None, snmp_port=0, snmp_trap_targets=[("127.0.0.1", snmptrapd.port)], tick=0.05
    )
    sim.inject("utility.fail")
    sim.inject("uplink.down", "wan-2")
    await _wait(lambda: sum("TRAP" in line for line in snmptrapd.lines()) >= 3)
    text = "\n".join(snmptrapd.lines())
    assert ".1.3.6.1.2.1.33.2.0.1" in text  # upsTrapOnBattery, once per UPS
    assert ".1.3.6.1.6.3.1.1.5.3" in text  # linkDown of wan-2


async def test_simulated_ats_sends_powernet_traps_to_snmptrapd_and_our_listener(
    make_simulator: Callable[..., Awaitable[RunningSimulator]], snmptrapd: Snmptrapd
) -> None:
    """Utility lost: atsLostRedundancy (source A), then atsSourceSwitched to B once the
    generator carries the load; utility back: atsRedundancyRestored, then switched back to A.
    PowerNet-MIB: enterprises.318.0.126/127/128, mtrapargsInteger 0 = A, 1 = B."""
    events: list[Event] = []
    polled: list[str] = []
    port = free_port(__import__("socket").SOCK_DGRAM)
    config = TrapsConfig(listen=f"127.0.0.1:{port}")
    devices = [
        SnmpDevice("ups-a", "127.0.0.1", "ups-mib"),
        SnmpDevice("ats-1", "127.0.0.1", "apc-rats"),
    ]
    listener = TrapListener(config, "lab", devices, events.append, polled.append)
    await listener.start()
    try:
        sim = await make_simulator(
            nut_port=None,
            snmp_port=0,
            snmp_trap_targets=[("127.0.0.1", snmptrapd.port), ("127.0.0.1", port)],
            tick=0.05,
            speed=20,
        )
        ats = ".1.3.6.1.4.1.318.0."
        sim.inject("utility.fail")
        await sim.wait_for(lambda s: s.ats is not None and s.ats.source == "generator", 10)
        await _wait(lambda: sum(ats + "12" in line for line in snmptrapd.lines()) >= 2)
        sim.inject("utility.restore")
        await sim.wait_for(lambda s: s.ats is not None and s.ats.source == "utility", 10)
        await _wait(lambda: sum(ats + "12" in line for line in snmptrapd.lines()) >= 4)
        await _wait(lambda: len([e for e in events if e.device == "ats-1"]) >= 4)
    finally:
        await listener.stop()
    got = [
        (line.split(ats, 1)[1].split()[0], line) for line in snmptrapd.lines() if ats + "12" in line
    ]
    assert [code for code, _ in got] == ["127", "126", "128", "126"]
    lost, to_b, restored, to_a = (line for _, line in got)
    assert ".1.3.6.1.4.1.318.2.3.1.0 = INTEGER: 0" in lost  # source A is gone
    assert '.1.3.6.1.4.1.318.2.3.10.0 = STRING: "Source B"' in to_b
    assert ".1.3.6.1.4.1.318.2.3.1.0 = INTEGER: 0" in restored and "Source A" in to_a
    ats_events = [e for e in events if e.device == "ats-1"]
    assert [e.type for e in ats_events] == [
        "trap.redundancy_lost",
        "trap.ats_source_switched",
        "trap.redundancy_restored",
        "trap.ats_source_switched",
    ]
    assert ats_events[0].severity == "warning" and ats_events[2].severity == "info"
    assert ats_events[1].data["varbinds"]["1.3.6.1.4.1.318.2.3.1.0"] == "1"  # now on B
    assert ats_events[0].data["trap"] == "atsLostRedundancy"
    assert "ats-1" in polled


async def test_agent_turns_simulator_traps_into_events_and_polls_at_once(
    make_simulator: Callable[..., Awaitable[RunningSimulator]],
) -> None:
    trap_port = free_port(__import__("socket").SOCK_DGRAM)
    sim = await make_simulator(
        nut_port=None, snmp_port=0, snmp_trap_targets=[("127.0.0.1", trap_port)], tick=0.05
    )
    assert sim.snmp is not None
    site = parse_site(
        f"""
site: lab
traps: {{listen: "127.0.0.1:{trap_port}", community: public}}
devices:
  - {{id: ups-a, driver: snmp, host: 127.0.0.1, port: {sim.snmp.port}, community: ups-a,
     profile: ups-mib, interval: 30, alert_interval: 0.5, jitter: 0}}
  - {{id: wan, driver: snmp, host: 127.0.0.1, port: {sim.snmp.port}, community: switch,
     profile: if-mib, interval: 30, jitter: 0, uplinks: {{primary: wan-1}}}}
"""
    )
    agent = Agent(site, sinks=[])
    events: list[Event] = []
    agent.on_event(events.append)
    await agent.start()
    try:
        await _wait(
            lambda: agent.state.get("ups-a") is not None and agent.state.get("wan") is not None
        )
        assert "snmp" in agent.services
        polls_before = agent.pollers["ups-a"].polls
        started = time.monotonic()
        sim.inject("utility.fail")
        await _wait(lambda: any(e.type == "power.on_battery" for e in events))
        took = time.monotonic() - started
        kinds = [e.type for e in events]
        assert kinds.index("trap.on_battery") < kinds.index("power.on_battery")
        # The 30 s interval did not apply: the trap made the agent poll at once.
        assert agent.pollers["ups-a"].polls > polls_before and took < 10
        # Site power trouble puts every poller in alert mode.
        assert agent.pollers["wan"].alert and agent.pollers["ups-a"].alert
    finally:
        await agent.stop()


async def test_trap_port_that_cannot_be_bound_does_not_stop_the_agent() -> None:
    port = free_port(__import__("socket").SOCK_DGRAM)
    import socket

    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", port))
    try:
        site = parse_site(f'site: lab\ntraps: {{listen: "127.0.0.1:{port}"}}\n')
        agent = Agent(site, sinks=[])
        await agent.start()
        assert "snmp" not in agent.services
        await agent.stop()
    finally:
        blocker.close()
