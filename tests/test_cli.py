"""The console script as a user runs it: exit codes, clean stops, `simulate` and `demo`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.fixtures.procs import Proc, free_port, require_binary, wait_until

CLI = [sys.executable, "-m", "facility_agent.cli"]


def test_run_with_bad_site_file_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("site: lab1\ndevices:\n  - {id: UPS A, driver: nut}\n")
    out = subprocess.run([*CLI, "run", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "devices[0].id (line 3)" in out.stderr and "Traceback" not in out.stderr
    missing = subprocess.run(
        [*CLI, "run", "-c", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "cannot read the file" in missing.stderr


def test_run_survives_absent_broker_and_device_and_stops_cleanly(
    tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        f"site: lab1\nmqtt: {{host: 127.0.0.1, port: {free_port()}}}\n"
        f"devices:\n  - {{id: ups-a, driver: nut, host: 127.0.0.1, port: {free_port()}, ups: u,"
        " interval: 200ms, lost_after: 1}\n"
    )
    agent = procs([*CLI, "run", "-c", str(site)], tmp_path / "agent.log")
    wait_until(lambda: "communication lost" in agent.output(), 20, "comm lost logged")
    assert agent.alive()
    agent.signal(signal.SIGTERM)
    assert agent.popen.wait(15) == 0
    log = agent.output()
    assert "cannot connect to NUT server" in log and "Traceback" not in log


def test_simulate_serves_upsc(tmp_path: Path, procs: Callable[..., Proc]) -> None:
    upsc = require_binary("upsc")
    port = free_port()
    sim = procs([*CLI, "simulate", "--nut-port", str(port)], tmp_path / "sim.log")

    def status() -> bool:
        out = subprocess.run(
            [upsc, f"ups-a@127.0.0.1:{port}", "ups.status"], capture_output=True, text=True
        )
        return out.stdout.strip() == "OL"

    wait_until(status, 20, "upsc reading the simulator")
    listed = subprocess.run([upsc, "-l", f"127.0.0.1:{port}"], capture_output=True, text=True)
    assert listed.stdout.split() == ["ups-a", "ups-b"]
    sim.signal(signal.SIGINT)
    assert sim.popen.wait(10) == 0


def test_simulate_with_bad_scenario_exits_1() -> None:
    out = subprocess.run(
        [*CLI, "simulate", "--scenario", "no-such-scenario", "--nut-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "no bundled scenario" in out.stderr


def test_demo_runs_the_outage_and_exits_0() -> None:
    """The README's first command, as CI runs it: no terminal, so plain lines."""
    require_binary("mosquitto")
    started = time.monotonic()
    out = subprocess.run(
        [*CLI, "demo"],
        capture_output=True,
        text=True,
        timeout=150,
        stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    assert took < 120
    text = out.stdout
    assert "event critical: power.on_battery ups-a" in text
    assert "event info: power.on_line ups-a" in text
    assert "world: utility DOWN" in text
    # The policy's story: decided on the generator, cancelled when power came back, recovered.
    assert "event critical: shutdown.started ups" in text
    assert "event warning: shutdown.cancelled ups" in text
    assert "event info: recovery.completed" in text
    assert "time to detect:" in text and "time to recover (RTO):" in text
    assert "summary: scenario demo-outage" in text
    assert "agent status at the end: offline" in text
    assert "PROBLEM" not in text and "Traceback" not in out.stderr
