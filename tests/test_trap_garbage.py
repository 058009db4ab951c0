"""Datagrams on which pyasn1 fails with something other than its own error (found by
bench/fuzz.py): the trap listener drops and counts them, logs no traceback, and keeps turning
real traps (net-snmp's snmptrap) into events."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
from pathlib import Path

import pytest

from facility_agent.core.model import Event
from facility_agent.drivers.snmp.traps import SnmpDevice, TrapListener
from facility_agent.drivers.snmp.traps_config import TrapsConfig
from tests.fixtures.procs import free_port, require_binary
from tests.fixtures.snmp import client_env

#: pyasn1 0.6: OverflowError ("cannot fit 'int' into an index-sized integer") on the first,
#: IndexError ("list assignment index out of range") on the second; both are v2c traps with
#: mangled varbinds.
GARBAGE = [
    bytes.fromhex(
        "307e02010104057570732d61a77202041e2b76de02011002010f3064301106082b060102010103004305"
        "00a01f89e03017060a2b06010603010104010006092b0601020121020001300a060555832e7f7f42017f"
        "3012060849838113876506064088808080003016061203850585438369817b8362827d010101010180"
    ),
    bytes.fromhex(
        "3081ab02010104057570732d61a7819e0204ad7736a302010c02011030818f301006082b060102010103"
        "004304512136903017060a2b06010603010104010006092b06010201210200013080062b1c847b8fffff"
        "ff7f8fffffff7f84738fffffff7f8fffffff7f8fffffff7f812b8301842581298ffdffff7f410500ffff"
        "ffff302c061835ff7f8230852b844cff7f875887388147338635ff7f832c06104f8504842f817046ff6f"
        "ff7f83158240"
    ),
]


async def test_undecodable_datagrams_are_dropped_and_counted(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    require_binary("snmptrap")
    events: list[Event] = []
    arrived = asyncio.Event()
    port = free_port()
    listener = TrapListener(
        TrapsConfig(listen=f"127.0.0.1:{port}"),
        "lab",
        [SnmpDevice("ups-a", "127.0.0.1", "ups-mib")],
        lambda e: (events.append(e), arrived.set()),
        lambda device: None,
    )
    caplog.set_level(logging.ERROR)
    await listener.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for datagram in GARBAGE:
                s.sendto(datagram, ("127.0.0.1", port))
        argv = [
            "snmptrap",
            "-v2c",
            "-c",
            "public",
            f"127.0.0.1:{port}",
            "",
            ".1.3.6.1.2.1.33.2.0.1",
        ]
        out = await asyncio.to_thread(
            subprocess.run,
            argv,
            env=client_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        await asyncio.wait_for(arrived.wait(), 10)
        await asyncio.sleep(0.2)  # anything else that was coming
    finally:
        await listener.stop()
    assert [e.type for e in events] == ["trap.on_battery"]
    assert listener.stats.malformed == len(GARBAGE)
    assert not [
        r for r in caplog.records if r.exc_info or "Exception in callback" in r.getMessage()
    ]
