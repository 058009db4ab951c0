"""The policy against the simulated site over real NUT, with the agent as its own process:
kill -9 at every step of a plan resumes it with no step run twice and none skipped, and the
UPS really receives `shutdown.return` over the NUT protocol."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.procs import Proc
from tests.fixtures.waiting import until

STAGES = 4


def step_hook(tmp_path: Path) -> Path:
    script = tmp_path / "step.py"
    script.write_text(
        "import sys, time\n"
        "log = sys.argv[1]; name = sys.argv[2]\n"
        "open(log, 'a').write(f'start {name}\\n')\n"
        "time.sleep(0.8)\n"
        "open(log, 'a').write(f'end {name}\\n')\n"
    )
    return script


def nut_ups_pair(host: str, port: int = 3493) -> list[dict[str, Any]]:
    """The simulated site's two UPS units over NUT, with an account that may send commands."""
    return [
        {
            "id": u,
            "driver": "nut",
            "host": host,
            "port": port,
            "ups": u,
            "interval": 0.25,
            "username": "admin",
            "password": "adminpass",
            "allow_writes": True,
        }
        for u in ("ups-a", "ups-b")
    ]


def write_site(tmp_path: Path, nut_port: int, extra_stage: dict[str, Any] | None = None) -> Path:
    script = step_hook(tmp_path)
    log = tmp_path / "steps.log"
    stages = [
        {"name": f"s{i}", "steps": [{"run": [sys.executable, str(script), str(log), f"s{i}"]}]}
        for i in range(STAGES)
    ]
    if extra_stage:
        stages.append(extra_stage)
    site = plan_site(tmp_path, nut_ups_pair("127.0.0.1", nut_port), stages, on_battery_for=0.5)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def plan_site(
    tmp_path: Path,
    devices: list[dict[str, Any]],
    stages: list[dict[str, Any]],
    on_battery_for: float = 1,
    **more: Any,
) -> dict[str, Any]:
    """Site lab1 whose plan runs `stages` once group `ups` (ups-a, ups-b) has been on battery
    for `on_battery_for` s; `more`: other top-level sections (recovery)."""
    return {
        "site": "lab1",
        "state_dir": str(tmp_path / "state"),
        "devices": devices,
        "groups": [{"id": "ups", "members": ["ups-a", "ups-b"], "min": 1, "hold": 0.2}],
        "shutdown": {
            "group": "ups",
            "triggers": {"on_battery_for": on_battery_for, "hold": 0.2, "runtime_margin": None},
            "stages": stages,
        },
        **more,
    }


def run_agent(procs: Callable[..., Proc], site: Path, log: Path) -> Proc:
    """`facility-agent run` on `site`, as its own process."""
    return procs([sys.executable, "-m", "facility_agent.cli", "run", "-c", str(site)], log)


def fail_power(sim: RunningSimulator) -> None:
    """The utility fails and the generator will not crank: the UPS units go on battery."""
    sim.inject("generator.crank_fail")
    sim.inject("utility.fail")


def journal_state(tmp_path: Path) -> str | None:
    db = tmp_path / "state" / "journal.sqlite"
    if not db.exists():
        return None
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT state FROM runs WHERE kind='shutdown' ORDER BY id DESC"
        ).fetchone()
    return None if row is None else str(row[0])


def dry_drill(
    tmp_path: Path, site: dict[str, Any], scenario: str, speed: str, *more: str
) -> subprocess.CompletedProcess[str]:
    """`facility-agent drill --dry-run` on `site` (written to tmp_path), which must succeed."""
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    argv = [sys.executable, "-m", "facility_agent.cli", "drill", "-c", str(path)]
    argv += ["--scenario", scenario, "--speed", speed, "--dry-run", *more]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def lines(tmp_path: Path) -> list[str]:
    log = tmp_path / "steps.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("kill_during", range(STAGES))
async def test_kill_9_at_every_step_resumes_without_repeats_or_gaps(
    kill_during: int,
    tmp_path: Path,
    nut_simulator: RunningSimulator,
    procs: Callable[..., Proc],
) -> None:
    site = write_site(tmp_path, nut_simulator.nut_port)
    agent = run_agent(procs, site, tmp_path / "agent1.log")
    await asyncio.sleep(1.5)
    fail_power(nut_simulator)
    await until(lambda: f"start s{kill_during}" in lines(tmp_path), 20, f"stage {kill_during}")
    agent.signal(signal.SIGKILL)
    agent.popen.wait(10)
    assert journal_state(tmp_path) == "running"
    again = run_agent(procs, site, tmp_path / "agent2.log")
    await until(lambda: journal_state(tmp_path) == "completed", 30, "the resumed plan")
    await asyncio.sleep(1.0)  # a hook orphaned by the kill finishes its own work
    got = lines(tmp_path)
    for i in range(STAGES):
        assert got.count(f"start s{i}") == 1, got  # never run twice
        assert got.count(f"end s{i}") == 1, got  # never skipped
    starts = [line for line in got if line.startswith("start")]
    assert starts == [f"start s{i}" for i in range(STAGES)]
    assert "resuming shutdown run" in again.output()
    again.signal(signal.SIGTERM)
    assert again.popen.wait(15) == 0


async def test_shutdown_return_reaches_the_ups_over_nut(
    tmp_path: Path,
    nut_simulator: RunningSimulator,
    procs: Callable[..., Proc],
) -> None:
    last = {
        "name": "ups",
        "no_return": True,
        "steps": [
            {"device": "ups-a", "action": "shutdown.return"},
            {"device": "ups-b", "action": "shutdown.return"},
        ],
    }
    site = write_site(tmp_path, nut_simulator.nut_port, extra_stage=last)
    agent = run_agent(procs, site, tmp_path / "a.log")
    await asyncio.sleep(1.5)
    fail_power(nut_simulator)
    await until(lambda: journal_state(tmp_path) == "completed", 30, "the plan")
    ups = nut_simulator.site.ups["ups-a"]
    assert ups.shutdown_kind == "return"  # the NUT INSTCMD arrived and the model took it
    assert "INSTCMD shutdown.return accepted" in agent.output()
    agent.signal(signal.SIGTERM)
    assert agent.popen.wait(15) == 0


def test_drill_reports_detect_decide_steps_and_recovery(tmp_path: Path) -> None:
    canary = tmp_path / "hook-ran"
    # The drill points the UPS units at the simulator; far-pdu has no simulated twin.
    devices = [
        *nut_ups_pair("10.9.9.9"),
        {"id": "far-pdu", "driver": "nut", "host": "10.9.9.9", "ups": "not-simulated"},
    ]
    stages = [
        {"name": "hook", "steps": [{"run": ["/usr/bin/touch", str(canary)]}]},
        {"name": "pause", "steps": [{"wait": 0.5}]},
        {
            "name": "ups",
            "no_return": True,
            "steps": [{"device": "ups-a", "action": "shutdown.return"}],
        },
    ]
    recovery = {"stable_for": 1, "min_charge": 0, "stages": []}
    site = plan_site(tmp_path, devices, stages, recovery=recovery)
    dry_drill(tmp_path, site, "demo-outage", "3", "--report", str(tmp_path / "report.txt"))
    report = (tmp_path / "report.txt").read_text()
    assert "(left out): far-pdu" in report  # no simulated counterpart
    assert "time to detect:" in report and "time to decide:" in report
    assert "on battery for 1 s" in report
    assert "dry run: would run /usr/bin/touch" in report and not canary.exists()
    assert "ups-a shutdown.return: INSTCMD shutdown.return accepted" in report
    assert "plan completed after" in report and "margin" in report
    assert "time to recover (RTO):" in report
    assert (tmp_path / "state" / "drill-journal.sqlite").exists()
    assert not (tmp_path / "state" / "journal.sqlite").exists()  # drills never touch it


def test_generator_takes_over_no_shutdown(tmp_path: Path) -> None:
    """The bundled demo site (NUT, Modbus genset, SNMP PDUs) through `generator-backup`: the
    generator starts and carries the load, so the plan never starts."""
    from importlib.resources import files

    text = (files("facility_agent.data") / "demo-site.yaml").read_text()
    site = yaml.safe_load(text)
    site["state_dir"] = str(tmp_path / "state")
    out = dry_drill(tmp_path, site, "generator-backup", "5")
    assert "time to detect:" in out.stdout
    assert "no shutdown was started" in out.stdout
    assert "left out" not in out.stdout  # every device of the demo site has a simulated twin
    assert "[generator.running] gen-1" in out.stderr


async def test_generator_fails_servers_off_over_ipmi_ups_last_then_recovered(
    tmp_path: Path, make_simulator: Any, procs: Callable[..., Proc]
) -> None:
    """The issue's main story on the simulated site, agent as its own process (so pyghmi's
    client and the simulated BMCs never share one): the generator will not crank, the plan
    starts in time, the servers are shut down over IPMI (soft, verified), the UPS units get
    `shutdown.return` last, all before the batteries run out; power back -> servers on again."""
    sim = await make_simulator(speed=4, ipmi_port=0)
    ports = sim.info.ports
    servers = ["srv-01", "srv-02"]
    devices = nut_ups_pair("127.0.0.1", sim.nut_port)
    devices += [
        {
            "id": s,
            "driver": "ipmi",
            "host": "127.0.0.1",
            "port": ports[f"ipmi:{s}"],
            "username": "admin",
            "password": "adminpass",
            "interval": 1,
            "allow_writes": True,
        }
        for s in servers
    ]
    stages = [
        {
            "name": "servers",
            "steps": [
                {
                    "device": s,
                    "action": "soft_off",
                    "undo": "power_on",
                    "params": {"timeout": "30", "fallback": "hard_off"},
                    "timeout": 60,
                }
                for s in servers
            ],
        },
        {
            "name": "ups",
            "no_return": True,
            "steps": [{"device": u, "action": "shutdown.return"} for u in ("ups-a", "ups-b")],
        },
    ]
    recovery = {"stable_for": 1, "min_charge": 0, "retries": 3, "stages": []}
    site = plan_site(tmp_path, devices, stages, recovery=recovery)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    agent = run_agent(procs, path, tmp_path / "agent.log")
    await asyncio.sleep(3)
    fail_power(sim)
    await until(lambda: journal_state(tmp_path) == "completed", 60, "the plan")
    for s in servers:
        assert sim.site.servers[s].state == "off", s
    for u in ("ups-a", "ups-b"):
        ups = sim.site.ups[u]
        assert ups.shutdown_kind == "return"
        assert ups.charge > 50  # finished with battery to spare
    db = tmp_path / "state" / "journal.sqlite"
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT stage, label, state, started, ended FROM steps").fetchall()
    server_end = max(r[4] for r in rows if r[0] == 0)
    ups_start = min(r[3] for r in rows if r[0] == 1)
    assert all(r[2] == "done" for r in rows), rows
    assert ups_start >= server_end  # the UPS units last
    sim.inject("utility.restore")

    def recovered() -> bool:
        with sqlite3.connect(db) as con:
            row = con.execute(
                "SELECT state FROM runs WHERE kind='recovery' ORDER BY id DESC"
            ).fetchone()
        return row is not None and row[0] == "completed"

    await until(recovered, 90, "recovery")
    for s in servers:
        assert sim.site.servers[s].state in ("booting", "on"), s  # chassis on, OS coming up
    assert "soft_off: " in agent.output()
    agent.signal(signal.SIGTERM)
    assert agent.popen.wait(15) == 0
