"""A device that comes back is seen within seconds, however long it was away: the simulated
site (`facility-agent simulate`: NUT, SNMP and Modbus TCP faces) is killed for 20 s and started
again on the same ports, and each device must be `comm: ok` again within 8 s (the bound:
`backoff_max`, 5 s by default, plus 10 % jitter and one poll; generous for a loaded machine)."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from facility_agent.config.site import parse_site
from facility_agent.runtime.agent import Agent
from tests.fixtures.procs import Proc, free_port, tcp_open
from tests.fixtures.waiting import until

OUTAGE = 20.0
DEVICES = ("ups-a", "pdu-a", "gen-1")


def site(tmp_path: Path, ports: dict[str, int]) -> str:
    base: dict[str, Any] = {"host": "127.0.0.1", "interval": 1}
    doc = {
        "site": "lab1",
        "state_dir": str(tmp_path),
        "devices": [
            {**base, "id": "ups-a", "driver": "nut", "port": ports["nut"], "ups": "ups-a"},
            {
                **base,
                "id": "pdu-a",
                "driver": "snmp",
                "port": ports["snmp"],
                "community": "pdu-a",
                "profile": "apc-rpdu2",
            },
            {
                **base,
                "id": "gen-1",
                "driver": "modbus",
                "port": ports["modbus"],
                "unit": 10,
                "profile": "dse-gencomm",
            },
        ],
    }
    return yaml.safe_dump(doc)


async def test_devices_are_ok_within_seconds_of_the_simulator_coming_back(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    ports = {"nut": free_port(), "snmp": free_port(socket.SOCK_DGRAM), "modbus": free_port()}
    argv = [sys.executable, "-m", "facility_agent.cli", "simulate", "--modbus-rtu", "off"]
    argv += [f"--{face}-port={port}" for face, port in ports.items()]

    async def simulator(run: int) -> Proc:
        proc = procs(argv, tmp_path / f"sim-{run}.log")
        up = lambda: tcp_open(ports["nut"]) and tcp_open(ports["modbus"])  # noqa: E731
        await until(up, 30, f"the simulator listening\n{proc.output()}")
        return proc

    first = await simulator(1)
    agent = Agent(parse_site(site(tmp_path, ports)))

    def comm(device: str) -> str | None:
        st = agent.state.get(device)
        return None if st is None else st.comm

    await agent.start()
    try:
        await until(lambda: all(comm(d) == "ok" for d in DEVICES), 30, "all devices ok")
        first.popen.kill()  # gone at once, as a crashed or rebooted box
        first.popen.wait(5)
        await until(lambda: all(comm(d) == "lost" for d in DEVICES), 20, "all devices lost")
        await asyncio.sleep(OUTAGE)
        await simulator(2)
        started = time.monotonic()
        back_at: dict[str, float] = {}

        def all_back() -> bool:
            for d in DEVICES:
                if d not in back_at and comm(d) == "ok":
                    back_at[d] = time.monotonic() - started
            return len(back_at) == len(DEVICES)

        await until(all_back, 90, "all devices ok again")
        print(
            "back after a 20 s outage: " + ", ".join(f"{d} {t:.2f} s" for d, t in back_at.items())
        )
        assert max(back_at.values()) <= 8.0, back_at
    finally:
        await agent.stop()
