"""The console script as a user runs it: exit codes, clean stops, `simulate` and `demo`."""

from __future__ import annotations

import os
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


DEMO_SITE = str(Path(__file__).resolve().parent.parent / "config" / "demo-site.yaml")
EXAMPLE_SITE = Path(__file__).resolve().parent.parent / "config" / "site.example.yaml"

#: (argv, exit code): every subcommand given bad arguments. Usage errors are 1 (the contract's
#: "invalid input"), except `status`, a monitoring check, where they are UNKNOWN (3).
BAD_ARGUMENTS: list[tuple[list[str], int]] = [
    ([], 1),
    (["no-such-command"], 1),
    (["--log-level", "loud", "check"], 1),
    (["run", "--no-such-flag"], 1),
    (["run", "-c", "/nonexistent/site.yaml"], 1),
    (["run", "-c", "/nonexistent/site.yaml", "--log-format", "xml"], 1),
    (["check", "-c"], 1),
    (["check", "-c", "/nonexistent/site.yaml"], 1),
    (["drill", "-c", DEMO_SITE, "--scenario", "nosuch"], 1),
    (["drill", "-c", DEMO_SITE, "--scenario", "/nonexistent/scenario.yaml"], 1),
    (["drill", "-c", DEMO_SITE, "--speed", "-1"], 1),
    (["drill", "-c", DEMO_SITE, "--speed", "0"], 1),
    (["drill", "-c", DEMO_SITE, "--speed", "fast"], 1),
    (["drill", "-c", "/nonexistent/site.yaml"], 1),
    (["demo", "--scenario", "nosuch"], 1),
    (["demo", "--speed", "0"], 1),
    (["simulate", "--speed", "-2"], 1),
    (["simulate", "--scenario", "nosuch", "--nut-port", "0"], 1),
    (["simulate", "--snmp-trap-target", "nowhere", "--nut-port", "0"], 1),
    (["simulate", "--nut-port", "many"], 1),
    (["status", "--no-such-flag"], 3),
    (["status", "--timeout", "0"], 3),
    (["status", "--format", "xml"], 3),
    (["status", "-c", "/nonexistent/site.yaml"], 3),
    (["runbook", "-c", "/nonexistent/site.yaml"], 1),
    (["runbook", "-c", DEMO_SITE, "--format", "pdf"], 1),
    (["runbook", "-c", DEMO_SITE, "-o", "/nonexistent/dir/runbook.md"], 1),
    (["install-service", "--no-such-flag"], 1),
    (["install-service", "-c", "relative/site.yaml", "--dry-run"], 1),
]


def test_every_subcommand_with_bad_arguments_exits_by_the_rule_without_a_traceback() -> None:
    wrong = []
    for argv, code in BAD_ARGUMENTS:
        out = subprocess.run(
            [*CLI, *argv], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        said = out.stdout + out.stderr
        if out.returncode != code or "Traceback" in said or not said.strip():
            wrong.append(f"{argv}: exit {out.returncode} (want {code}):\n{said[-600:]}")
    assert not wrong, "\n".join(wrong)


def test_global_flags_go_before_or_after_the_subcommand(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: lab1\n")
    for argv in (
        ["--log-format", "json", "check", "-c", str(site)],
        ["check", "-c", str(site), "--log-format", "json", "--log-level", "debug"],
    ):
        out = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "OK, site 'lab1'" in out.stdout, (argv, out.stderr)


def test_help_shows_defaults_and_c_has_one_default() -> None:
    def helptext(*argv: str) -> str:
        env = {**os.environ, "COLUMNS": "250"}  # no wrapping inside the strings looked for
        out = subprocess.run([*CLI, *argv, "--help"], capture_output=True, text=True, env=env)
        assert out.returncode == 0, argv
        return out.stdout

    for command in ("run", "check", "drill", "runbook", "install-service"):
        text = helptext(command)
        assert "-c CONFIG, --config CONFIG" in text, command
        assert "[/etc/facility-agent/site.yaml]" in text, command
        assert "--log-format" in text and "log level [info]" in text, command
    assert "[utility-outage: the utility fails for 30 s" in helptext("drill")
    sim = helptext("simulate")
    assert "NUT (upsd) port; 0 = any free [3493]" in sim
    assert "--listen ADDRESS" in sim and "[off: no IPMI face]" in sim
    assert "[auto]" in helptext("status") and "usage errors 3" in helptext("status")
    # `check` with no -c reads the default path (absent here), and says so.
    out = subprocess.run([*CLI, "check"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "/etc/facility-agent/site.yaml" in out.stderr


def test_status_old_option_spellings_still_work_and_a_closed_pipe_keeps_the_verdict() -> None:
    port = free_port()
    old = [*CLI, "status", "--site", "x", "--host", "127.0.0.1", "--port", str(port)]
    out = subprocess.run(old, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and f"cannot reach the MQTT broker 127.0.0.1:{port}" in out.stdout
    # stdout already closed by its reader (`status | head -1` that has its line): still 3.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = subprocess.run(
            [*CLI, "status", "--site", "x", "--mqtt-port", str(port)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert closed.returncode == 3 and "Traceback" not in closed.stderr, closed.stderr


def check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    site = tmp_path / "site.yaml"
    site.write_text(text)
    out = subprocess.run(
        [*CLI, "check", "-c", str(site)], capture_output=True, text=True, timeout=60, env=env
    )
    return out.returncode, out.stdout + out.stderr


def test_check_says_how_to_fix_it(tmp_path: Path) -> None:
    code, text = check(
        tmp_path,
        "site: lab1\n"
        "devices:\n"
        "  - {id: ups-a, driver: nut, host: 127.0.0.1, ups: u, intervall: 1s}\n"
        "  - {id: ups-c, driver: nut, host: 127.0.0.1, ups: u}\n"
        "groups:\n"
        "  - {id: power, kind: power, min: 1, members: [ups-a, ups-b]}\n",
    )
    assert code == 1
    assert "devices[0].intervall (line 3): unknown key: did you mean `interval`?" in text
    assert (
        "groups[0].members[1] (line 6): no device 'ups-b' (defined devices: ups-a, ups-c)" in text
    )
    code, text = check(
        tmp_path,
        "site: lab1\n"
        "devices:\n"
        "  - {id: ups-a, driver: nut, host: 127.0.0.1, ups: u}\n"
        "groups:\n"
        "  - {id: power, kind: power, min: 1, members: [ups-a]}\n"
        "shutdown:\n"
        "  group: power\n"
        "  stages:\n"
        "    - {name: x, steps: [{run: [/bin/true], wait: 1s}]}\n",
    )
    assert "a step is exactly one of" in text and "Value error" not in text
    code, text = check(tmp_path, "site: lab1\ndevices:\n\t- {id: a}\n")
    assert code == 1 and "(line 3): not valid YAML: a tab at column 1: indent with spaces" in text


def test_the_example_site_file_passes_check_once_its_secrets_are_set(tmp_path: Path) -> None:
    base = {
        k: v for k, v in os.environ.items() if k not in ("MATRIX_PW", "SMTP_PW", "INFLUX_TOKEN")
    }
    code, text = check(tmp_path, EXAMPLE_SITE.read_text(), env=base)
    # What README.md says to set first, and nothing else (no "should be a valid string").
    assert code == 1 and "3 problems" in text, text
    for name in ("INFLUX_TOKEN", "MATRIX_PW", "SMTP_PW"):
        assert f"environment variable {name} is not set" in text
        assert f"put {name}=... in /etc/facility-agent/env" in text
    assert "valid string" not in text
    secrets = {"MATRIX_PW": "x", "SMTP_PW": "y", "INFLUX_TOKEN": "z"}
    code, text = check(tmp_path, EXAMPLE_SITE.read_text(), env={**base, **secrets})
    assert code == 0 and "OK, site" in text, text
