"""`ssh:` steps and the NUT face in drills on the simulated site: `--dry-run` lists the remote
command and touches nothing; a real drill runs a harmless remote command once, journaled and
timed; a drill never powers a remote host off for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from facility_agent.config.site import parse_site
from facility_agent.policy.journal import Journal
from facility_agent.tools.drill import host_power_steps
from tests.fixtures.procs import free_port, tcp_open
from tests.fixtures.simulator import outage_scenario
from tests.fixtures.sshd import Sshd, keygen

CLI = [sys.executable, "-m", "facility_agent.cli"]

SCENARIO = outage_scenario("ssh-test", back_at=25, duration=30)


def site_text(server: Sshd, known: Path, argv: list[str], nut_port: int, state: Path) -> str:
    ups = (
        "driver: nut, host: 127.0.0.1, interval: 300ms, timeout: 1s, lost_after: 3, "
        "username: admin, password: adminpass"
    )
    return f"""\
site: sshdrill
state_dir: {state}
devices:
  - {{id: ups-a, ups: ups-a, {ups}}}
  - {{id: ups-b, ups: ups-b, {ups}}}
groups:
  - {{id: ups, kind: power, members: [ups-a, ups-b], min: 1, hold: 500ms}}
nut_server:
  listen: "127.0.0.1:{nut_port}"
  users: [{{name: secondary, password: pw}}]
shutdown:
  group: ups
  triggers: {{on_battery_for: 1s, hold: 500ms}}
  expected_duration: 20s
  stages:
    - name: remote-hosts
      notify_nut_secondaries: true
      steps:
        - ssh:
            host: 127.0.0.1
            port: {server.port}
            run: {argv!r}
            known_hosts_file: {known}
            key_file: {server.client_key}
            success: disconnect
          timeout: 10s
"""


def drill(site: Path, scenario: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "drill", "-c", str(site), "--scenario", str(scenario), *extra],
        capture_output=True,
        text=True,
        timeout=180,
    )


def drill_site(sshd: Sshd, tmp_path: Path, argv: list[str]) -> tuple[Path, Path, int]:
    """The site file (its `ssh:` stage runs `argv` on the test sshd), the scenario, and the free
    port its NUT face is given."""
    scenario = tmp_path / "ssh-test.yaml"
    scenario.write_text(SCENARIO)
    known = sshd.known_hosts(tmp_path / "known_hosts")
    nut_port = free_port()
    site = tmp_path / "site.yaml"
    site.write_text(site_text(sshd, known, argv, nut_port, tmp_path / "state"))
    return site, scenario, nut_port


def test_drill_dry_run_lists_the_remote_command_and_touches_nothing(
    sshd_server: Sshd, tmp_path: Path
) -> None:
    site, scenario, nut_port = drill_site(sshd_server, tmp_path, ["systemctl", "poweroff"])
    assert host_power_steps(parse_site(site.read_text())) == [
        "stage remote-hosts: ssh 127.0.0.1: systemctl poweroff"
    ]
    refused = drill(site, scenario)
    assert refused.returncode == 1 and "ssh 127.0.0.1: systemctl poweroff" in refused.stderr
    out = drill(site, scenario, "--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"dry run: would run on root@127.0.0.1:{sshd_server.port}: systemctl poweroff" in (
        out.stdout
    )
    assert sshd_server.asked == []
    assert not tcp_open(nut_port)


def test_real_drill_runs_the_remote_command_once_and_times_it(
    sshd_server: Sshd, tmp_path: Path
) -> None:
    site, scenario, nut_port = drill_site(sshd_server, tmp_path, ["sleep", "1"])
    state = tmp_path / "state"
    out = drill(site, scenario)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sshd_server.asked == ["sleep 1"]
    assert f"root@127.0.0.1:{sshd_server.port}: exit 0" in out.stdout
    assert not tcp_open(nut_port), "a drill's NUT face must not listen on the site's address"
    journals = list(state.rglob("*.sqlite"))
    durations = []
    for path in journals:
        j = Journal(path)
        for run in j.runs("shutdown"):
            durations += [s.duration for s in j.steps(run.id) if s.label.startswith("ssh ")]
    assert len(durations) == 1 and durations[0] is not None and 0.8 < durations[0] < 10


def test_changed_host_key_in_a_drill_is_a_critical_event_naming_the_host(
    sshd_server: Sshd, tmp_path: Path
) -> None:
    scenario = tmp_path / "ssh-test.yaml"
    scenario.write_text(SCENARIO)
    impostor = keygen(tmp_path / "impostor")
    known = sshd_server.known_hosts(tmp_path / "known_hosts", impostor)
    site = tmp_path / "site.yaml"
    site.write_text(site_text(sshd_server, known, ["true"], free_port(), tmp_path / "state"))
    out = drill(site, scenario)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "event critical: ssh.host_key_changed" in out.stdout, out.stdout
    assert "host key does not match" in out.stdout
    assert sshd_server.asked == []
