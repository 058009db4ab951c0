"""The agent's NUT face against Debian's real NUT clients: upsc, upscmd -l, upsrw -l, and
upsmon as a secondary that must shut down exactly once, at the plan's notify stage, never on a
flap. The UPS units are in-process drivers whose power the test controls."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from facility_agent.config.site import parse_site
from facility_agent.core.model import utcnow
from facility_agent.core.registry import driver_classes
from facility_agent.runtime import agent as agent_module
from facility_agent.runtime.agent import Agent
from tests.fixtures.procs import Proc, free_port, require_binary
from tests.fixtures.upsmon import start_upsmon
from tests.fixtures.world import WORLD, WorldDriver


@pytest.fixture(autouse=True)
def _world(monkeypatch: pytest.MonkeyPatch) -> None:
    WORLD.clear()
    for ups in ("ups-a", "ups-b"):
        WORLD[ups] = {
            "status": "OL",
            "metrics": {"battery.charge": 100, "battery.runtime": 3000, "ups.model": "Lab 1500"},
        }
    monkeypatch.setattr(agent_module, "driver_class", lambda name: WorldDriver)


def site(tmp_path: Path, port: int) -> Any:
    devices = [{"id": d, "driver": "world", "interval": 0.1, "jitter": 0} for d in WORLD]
    return parse_site(
        yaml.safe_dump(
            {
                "site": "lab1",
                "state_dir": str(tmp_path / "state"),
                "devices": devices,
                "groups": [{"id": "ups", "members": list(WORLD), "hold": 0.1}],
                "nut_server": {
                    "listen": f"127.0.0.1:{port}",
                    "users": [{"name": "secondary", "password": "s3cret-pw"}],
                },
                "shutdown": {
                    "group": "ups",
                    "triggers": {"on_battery_for": 0.3, "hold": 0.1, "runtime_margin": None},
                    "cancel_after": 0.3,
                    "cooldown": 1,
                    "expected_duration": 10,
                    "stages": [
                        {"name": "apps", "steps": [{"wait": 4}]},
                        {"name": "servers", "notify_nut_secondaries": True, "steps": [{"wait": 3}]},
                        {"name": "last", "steps": [{"wait": 30}]},
                    ],
                },
            }
        ),
        "site.yaml",
        env={},
        drivers=lambda: {**driver_classes(), "world": WorldDriver},
    )


def nut_client(tool: str, *args: str) -> str:
    path = require_binary(tool)
    done = subprocess.run([path, *args], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        await asyncio.sleep(0.1)


async def test_nut_clients_list_and_read(tmp_path: Path) -> None:
    port = free_port()
    agent = Agent(site(tmp_path, port), sinks=[])
    await agent.start()
    try:
        await until(lambda: len(agent.state.all()) >= 2, 10, "first polls")
        where = f"127.0.0.1:{port}"
        listed = await asyncio.to_thread(nut_client, "upsc", "-l", where)
        assert listed.split() == ["ups-a", "ups-b"]
        allvars = await asyncio.to_thread(nut_client, "upsc", f"ups-a@{where}")
        assert "battery.charge: 100" in allvars.splitlines()
        assert "ups.status: OL" in allvars.splitlines()
        assert "ups.model: Lab 1500" in allvars.splitlines()
        one = await asyncio.to_thread(nut_client, "upsc", f"ups-b@{where}", "battery.runtime")
        assert one.strip() == "3000"
        cmds = await asyncio.to_thread(nut_client, "upscmd", "-l", f"ups-a@{where}")
        assert "ups-a" in cmds
        rw = await asyncio.to_thread(nut_client, "upsrw", "-l", f"ups-a@{where}")
        assert "ups-a" not in rw or rw.strip() == ""  # read-only: nothing listed
        # Nothing can be written, whoever asks.
        refused = await asyncio.to_thread(
            subprocess.run,
            [
                require_binary("upsrw"),
                "-s",
                "battery.charge=1",
                "-u",
                "secondary",
                "-p",
                "s3cret-pw",
                f"ups-a@{where}",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert refused.returncode != 0
        assert (
            "battery.charge: 100"
            in (await asyncio.to_thread(nut_client, "upsc", f"ups-a@{where}")).splitlines()
        )
        WORLD["ups-a"]["status"] = "OB"
        await until(lambda: agent.state.all()["ups-a"].status == ("OB",), 5, "OB")
        one = await asyncio.to_thread(nut_client, "upsc", f"ups-a@{where}", "ups.status")
        assert one.strip() == "OB"
    finally:
        await agent.stop()


async def test_upsmon_secondary_follows_the_plan(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    port = free_port()
    agent = Agent(site(tmp_path, port), sinks=[])
    await agent.start()
    upsmon = start_upsmon(
        tmp_path / "upsmon", f"127.0.0.1:{port}", WORLD, "secondary", "s3cret-pw", procs
    )
    try:
        await until(
            lambda: "nut" in agent.services and len(agent.services["nut"]._clients) >= 2,  # type: ignore[attr-defined]
            15,
            "upsmon logged in",
        )
        # A flap: on battery long enough to start the plan, back before its notify stage.
        for ups in WORLD.values():
            ups["status"] = "OB"
        await until(
            lambda: agent.policy is not None and agent.policy.plan_task is not None,
            10,
            "plan started",
        )
        await until(lambda: upsmon.notified("ONBATT") == set(WORLD), 10, "upsmon saw ONBATT")
        for ups in WORLD.values():
            ups["status"] = "OL"
        await until(
            lambda: agent.policy is not None and agent.policy.plan_task is None,
            10,
            "plan cancelled",
        )
        await until(lambda: upsmon.notified("ONLINE") == set(WORLD), 10, "upsmon saw ONLINE")
        await asyncio.sleep(3)  # three upsmon polls: nothing may follow
        assert upsmon.shutdowns() == []
        assert upsmon.notified("FSD") == set()

        # The real outage: the plan runs to its notify stage, and only then upsmon acts.
        for ups in WORLD.values():
            ups["status"] = "OB"
        await until(
            lambda: (
                agent.policy is not None
                and agent.policy.plan is not None
                and agent.policy.plan.stage == 1
            ),
            20,
            "the notify stage",
        )
        reached = time.time()
        await until(lambda: upsmon.shutdowns() != [], 15, "SHUTDOWNCMD")
        assert upsmon.shutdowns()[0] >= reached - 0.5
        await asyncio.sleep(3)
        assert len(upsmon.shutdowns()) == 1, upsmon.shutdowns()
        assert upsmon.notified("FSD") == set(WORLD)
        assert "s3cret-pw" not in upsmon.proc.output()
    finally:
        await agent.stop()


async def test_login_rules_stale_data_and_nothing_writable() -> None:
    from facility_agent.core.model import DeviceState
    from facility_agent.drivers.nut.face.config import NutServerConfig
    from facility_agent.drivers.nut.face.server import NutFace

    states = {
        "ups-a": DeviceState("ups-a", "world", utcnow(), "ok", ("OL",), {"battery.charge": 97.5}),
        "ups-b": DeviceState("ups-b", "world", utcnow(), "lost", ("OB",), {}),
        "srv-01": DeviceState("srv-01", "world", utcnow(), "ok", ("POWER_ON",), {}),
    }
    config = NutServerConfig.model_validate(
        {"listen": "127.0.0.1:0", "users": [{"name": "mon", "password": "good"}]}
    )
    face = NutFace(config, lambda: states, lambda: False)
    await face.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", face.port)

        async def ask(line: str) -> str:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await reader.readline()).decode().strip()

        assert await ask("GET VAR ups-a battery.charge") == 'VAR ups-a battery.charge "97.5"'
        assert await ask("GET VAR ups-b ups.status") == "ERR DATA-STALE"
        assert await ask("GET VAR srv-01 ups.status") == "ERR UNKNOWN-UPS"
        assert await ask("GET VAR ups-a nope") == "ERR VAR-NOT-SUPPORTED"
        assert await ask("LOGIN ups-a") == "ERR USERNAME-REQUIRED"
        assert await ask("USERNAME mon") == "OK"
        assert await ask("USERNAME again") == "ERR ALREADY-SET-USERNAME"
        assert await ask("PASSWORD bad") == "OK"
        assert await ask("LOGIN ups-a") == "ERR ACCESS-DENIED"
        for refused in ("SET VAR ups-a battery.charge 1", "INSTCMD ups-a beeper.off", "FSD ups-a"):
            assert await ask(refused) == "ERR ACCESS-DENIED"
        assert await ask("STARTTLS") == "ERR FEATURE-NOT-CONFIGURED"
        assert await ask("LIST UPS") == "BEGIN LIST UPS"
        assert await reader.readline() == b'UPS ups-a "served by facility-agent"\n'
        assert await reader.readline() == b'UPS ups-b "served by facility-agent"\n'
        assert await reader.readline() == b"END LIST UPS\n"
        # A request line beyond the limit closes the connection.
        writer.write(b"GET " + b"x" * 5000 + b"\n")
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        _, writer = await asyncio.open_connection("127.0.0.1", face.port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", face.port)
        w2.write(b"USERNAME mon\nPASSWORD good\nLOGIN ups-a\nGET NUMLOGINS ups-a\nLOGOUT\n")
        await w2.drain()
        replies = (await r2.read()).decode().splitlines()
        assert replies == ["OK", "OK", "OK", "NUMLOGINS ups-a 1", "OK Goodbye"]
        writer.close()
    finally:
        await face.stop()
