"""The box powers itself off, last: the UPS units are told when to cut the load and to come
back (`ups.delay.shutdown`, `ups.delay.start`, `shutdown.return`), then the host's own poweroff
runs. The real `systemctl poweroff` is replaced by a recording argv in the site file; the UPS
side is the simulated site's NUT face, which models the delays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from facility_agent.config.site import parse_site
from facility_agent.tools.drill import host_power_steps, run_drill
from tests.fixtures.simulator import outage_scenario

CLI = [sys.executable, "-m", "facility_agent.cli"]

SCENARIO = outage_scenario("poweroff-test", back_at=30, duration=45)


def site_text(poweroff: list[str]) -> str:
    ups = (
        "driver: nut, host: 127.0.0.1, interval: 300ms, timeout: 1s, lost_after: 3, "
        "username: admin, password: adminpass, allow_writes: true"
    )
    steps = "\n".join(f"          - {{device: ups-{u}, action: shutdown.return}}" for u in "ab")
    return f"""\
site: poweroff
devices:
  - {{id: ups-a, ups: ups-a, {ups}}}
  - {{id: ups-b, ups: ups-b, {ups}}}
groups:
  - {{id: ups, kind: power, members: [ups-a, ups-b], min: 1, hold: 500ms}}
shutdown:
  group: ups
  triggers: {{on_battery_for: 1s, hold: 500ms}}
  expected_duration: 20s
  stages:
    - name: ups-timers
      steps:
        - {{device: ups-a, action: set, params: {{var: ups.delay.shutdown, value: "4"}}}}
        - {{device: ups-b, action: set, params: {{var: ups.delay.shutdown, value: "4"}}}}
        - {{device: ups-a, action: set, params: {{var: ups.delay.start, value: "2"}}}}
        - {{device: ups-b, action: set, params: {{var: ups.delay.start, value: "2"}}}}
    - name: ups
      no_return: true
      steps:
{steps}
    - name: host
      steps:
        - run: {poweroff!r}
          timeout: 10s
"""


def recorder(tmp_path: Path) -> tuple[list[str], Path]:
    record = tmp_path / "poweroff.log"
    argv = ["/bin/sh", "-c", f"cat >/dev/null; echo poweroff >> {record}"]
    return argv, record


async def test_the_plan_ends_with_the_ups_told_to_return_then_the_host_off(
    tmp_path: Path,
) -> None:
    argv, record = recorder(tmp_path)
    scenario = tmp_path / "poweroff-test.yaml"
    scenario.write_text(SCENARIO)
    site = parse_site(site_text(argv)).model_copy(update={"state_dir": tmp_path / "state"})
    seen: list[tuple[float, str]] = []

    def on_tick(report: Any, sim: Any) -> None:
        world = sim.site.snapshot()
        seen.append((float(world["time"]), world["ups"]["ups-a"]["status"]))

    report = await run_drill(site, str(scenario), speed=2, on_tick=on_tick)
    steps = [ev for _, ev in report.events if ev.type == "shutdown.step"]
    labels = [ev.message for ev in steps]
    assert all(ev.data.get("ok") for ev in steps), labels
    assert len(steps) == 7, labels
    # Stage order: the delays set, then shutdown.return, then (last) the host's poweroff.
    assert all("SET VAR ups.delay" in (ev.data.get("detail") or ev.message) for ev in steps[:4])
    assert all("shutdown.return" in ev.message for ev in steps[4:6]), labels
    assert "/bin/sh" in steps[6].message, labels
    assert record.read_text() == "poweroff\n"  # ran once, for real
    assert report.first("shutdown.completed") is not None
    # The UPS really cut the load (OFF) after ups.delay.shutdown, and came back on line by
    # itself once the utility returned: the site restarts when power returns.
    off = [t for t, status in seen if "OFF" in status.split()]
    assert off, seen[-20:]
    back = [t for t, status in seen if t > off[0] and "OL" in status.split()]
    assert back and back[0] >= 30.0, seen[-20:]


def test_drill_dry_run_shows_the_poweroff_and_runs_nothing(tmp_path: Path) -> None:
    argv, record = recorder(tmp_path)
    scenario = tmp_path / "poweroff-test.yaml"
    scenario.write_text(SCENARIO)
    site = tmp_path / "site.yaml"
    site.write_text(site_text(argv) + f"state_dir: {tmp_path / 'state'}\n")
    out = subprocess.run(
        [*CLI, "drill", "-c", str(site), "--scenario", str(scenario), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert text.startswith("drill: scenario") and "DRY RUN" in text.splitlines()[0]
    assert "drill report: scenario" in text and "(DRY RUN: no command or hook was run)" in text
    # Progress while it ran, then the report: the poweroff shown as what would run.
    assert "] world: utility.fail" in text and "] event critical: shutdown.started" in text
    assert f"dry run: would run {' '.join(argv)}" in text
    assert not record.exists()


def test_a_drill_never_powers_the_host_off_for_real(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(site_text(["systemctl", "poweroff"]))
    assert host_power_steps(parse_site(site.read_text())) == ["stage host: systemctl poweroff"]
    out = subprocess.run([*CLI, "drill", "-c", str(site)], capture_output=True, text=True)
    assert out.returncode == 1 and "powers the host off" in out.stderr and "--dry-run" in out.stderr
    assert "Traceback" not in out.stderr
