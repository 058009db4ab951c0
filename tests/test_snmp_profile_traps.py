"""Every SNMP profile declares its device's notifications (its MIB's TRAP-TYPE or NOTIFICATION-TYPE
numbers, see each profile's comment), and each one, sent by net-snmp's own snmptrap, becomes the
profile's event through the trap listener, attributed to the device polled through that profile.
SMIv1 MIBs (CPS-MIB, CPQPOWER-MIB, PowerNet-MIB) are also sent as v1 traps, as such cards do:
enterprise + specific-trap must map to ENTERPRISE.0.N (RFC 3584).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from facility_agent.core.model import Event
from facility_agent.drivers.snmp.profile import bundled_names, load_profile
from facility_agent.drivers.snmp.traps import SnmpDevice, TrapListener
from facility_agent.drivers.snmp.traps_config import TrapsConfig

from .fixtures.procs import free_port, require_binary
from .fixtures.snmp import client_env

pytestmark = pytest.mark.peer

#: One SMIv1 trap per MIB, as a v1 PDU: profile, enterprise, specific-trap, the expected event.
V1_SENDS = [
    ("cyberpower-cps", "1.3.6.1.4.1.3808", 5, "trap.on_battery"),
    ("cyberpower-epdu", "1.3.6.1.4.1.3808", 110, "trap.overload"),
    ("hpe-epdu", "1.3.6.1.4.1.232.165", 1, "trap.alarm"),
]


def _declared() -> list[tuple[str, str, str]]:
    """(profile, notification OID, event) of every trap every bundled profile declares."""
    out = []
    for name in bundled_names():
        profile = load_profile(name)
        for trap in profile.traps:
            oid = ".".join(map(str, profile.resolve(trap.oid)))
            out.append((name, oid, trap.event))
    return out


def test_every_snmp_profile_declares_its_traps() -> None:
    names = bundled_names()
    without = [n for n in names if not load_profile(n).traps]
    assert without == []
    assert len(_declared()) >= 140


async def test_each_declared_trap_sent_by_snmptrap_becomes_its_event(tmp_path: Path) -> None:
    require_binary("snmptrap")
    events: list[Event] = []
    port = free_port(__import__("socket").SOCK_DGRAM)
    config = TrapsConfig(listen=f"127.0.0.1:{port}", rate=10_000, burst=10_000)
    # One device per profile, all at one address: the trap's OID must pick the right one.
    devices = [SnmpDevice(f"dev-{n}", "127.0.0.1", n) for n in bundled_names()]
    declared = _declared()
    all_in = asyncio.Event()

    def emit(event: Event) -> None:
        events.append(event)
        if len(events) >= len(declared) + len(V1_SENDS):
            all_in.set()

    listener = TrapListener(config, "lab", devices, emit, lambda _: None)
    env = client_env(tmp_path)
    target = f"127.0.0.1:{port}"
    sends = [["snmptrap", "-v2c", "-c", "public", target, "", f".{oid}"] for _, oid, _ in declared]
    sends += [
        ["snmptrap", "-v1", "-c", "public", target, f".{ent}", "127.0.0.1", "6", str(n), ""]
        for _, ent, n, _ in V1_SENDS
    ]
    gate = asyncio.Semaphore(8)

    async def send(argv: list[str]) -> None:
        async with gate:
            out = await asyncio.to_thread(
                subprocess.run, argv, capture_output=True, text=True, env=env, timeout=20
            )
            assert out.returncode == 0, (argv, out.stderr)

    await listener.start()
    try:
        await asyncio.gather(*(send(argv) for argv in sends))
        await asyncio.wait_for(all_in.wait(), 20)
    finally:
        await listener.stop()
    assert len(events) == len(sends)
    assert listener.stats.unknown_trap == 0
    got: dict[str, list[Event]] = {}
    for event in events:
        got.setdefault(event.data["oid"], []).append(event)
    for profile, oid, kind in declared:
        arrived = got[oid]
        assert {e.type for e in arrived} == {kind}, (profile, oid)
        # Attributed to a device polled through a profile that defines this notification.
        owners = {p for p, o, _ in declared if o == oid}
        assert {e.device for e in arrived} <= {f"dev-{p}" for p in owners}, (profile, oid)
    for profile, enterprise, n, kind in V1_SENDS:
        v2 = f"{enterprise}.0.{n}"
        assert any(e.type == kind and e.device == f"dev-{profile}" for e in got[v2]), v2
