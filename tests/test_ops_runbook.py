"""The runbook of the demo site: every device, group, trigger and step with its numbers, the
learned durations and the last drill from a real journal, notify routes redacted, HTML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from facility_agent.config.site import load_site
from facility_agent.policy.journal import Journal

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "demo-site.yaml"
CONSOLE = Path(sys.executable).parent / "facility-agent"


def runbook(*args: str) -> str:
    out = subprocess.run(
        [str(CONSOLE), "runbook", *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def record_drill(state: Path) -> None:
    """A drill as the engine journals it: two stages done, one step failed."""
    state.mkdir(parents=True, exist_ok=True)
    journal = Journal(state / "drill-journal.sqlite")
    run = journal.start_run("shutdown", "generator gen-1 not running 8 s after", drill=True)
    journal.step_started(run, 0, 0, "/bin/echo facility-agent demo")
    journal.step_ended(run, 0, 0, "done", "exit 0")
    journal.step_started(run, 1, 0, "wait 25 s")
    journal.step_ended(run, 1, 0, "done", "waited 25 s")
    journal.step_started(run, 2, 0, "ups-a shutdown.return")
    journal.step_ended(run, 2, 0, "failed", "ups-a shutdown.return: refused")
    journal.end_run(run, "completed")
    journal.close()


def test_demo_runbook_has_every_device_group_trigger_and_step(tmp_path: Path) -> None:
    state = tmp_path / "state"
    record_drill(state)
    text = runbook("-c", str(DEMO), "--state-dir", str(state))
    site = load_site(DEMO)
    for dev in site.devices:
        assert f"| {dev.id} | {dev.driver} |" in text
    for device, sources in site.topology.items():
        assert f"`{device}` is fed by {', '.join(f'`{s}`' for s in sources)}" in text
    for group in site.groups:
        assert f"| {group.id} | {group.kind} | {', '.join(map(str, group.members))} |" in text
    # Every trigger of the demo site with its numbers.
    assert "group `ups` on battery for 600 s (10.0 min)" in text
    assert "+ margin 120 s (2.0 min)" in text
    assert "`gen-1` generator.state is not `running` 8 s after the power was lost" in text
    assert "LB on a UPS that is also on battery, held 5 s" in text
    assert "raises FSD" in text and "cancelled when power is back for 3 s" in text
    # Every step of every stage, in order, with its configured bound.
    assert site.shutdown is not None and site.recovery is not None
    at = 0
    for si, stage in enumerate(site.shutdown.stages):
        for step in stage.steps:
            row = f"| {si + 1}. {stage.name}"
            at = text.index(row, at)
            end = text.index("\n", at)
            assert step.label in text[at:end]
            at = end
    assert "| 25 s (wait) |" in text and "| 120 s (2.0 min) (timeout) |" in text
    assert "3. ups (no return)" in text
    assert "configured `expected_duration` 40 s" in text
    # Recovery: its conditions and stage.
    assert "on line for 5 s with every on-line member charged at least 0%" in text
    assert "facility-agent demo: site recovered" in text
    # The last drill, read from the drill journal: run, reason, each step's outcome.
    assert "### Drills" in text and "generator gen-1 not running 8 s after" in text
    assert "| ups-a shutdown.return | failed |" in text and "| wait 25 s | done |" in text
    assert "(learned from drills)" in text
    assert "Battery runtime of group `ups`: **unknown" in text


def test_runbook_redacts_notify_urls_and_renders_html(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        DEMO.read_text() + "\nnotify:\n  - {url: 'matrix://bot:s3cret-pw@matrix.example.org/#ops', "
        "min_severity: critical, name: oncall}\n"
        "  - {url: 'tgram://123456:TOKENTOKEN/42'}\n"
    )
    out = tmp_path / "runbook.html"
    runbook("-c", str(site), "--state-dir", str(tmp_path / "none"), "-o", str(out))
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "<table>" in html and "<h2>" in html
    assert "matrix://matrix.example.org/…" in html and "critical" in html and "oncall" in html
    assert "tgram://…" in html
    assert "s3cret" not in html and "TOKENTOKEN" not in html and "bot:" not in html
    md = runbook("-c", str(site), "--state-dir", str(tmp_path / "none"), "--format", "md")
    assert "None recorded in" in md and "s3cret" not in md


def test_runbook_of_a_bad_file_lists_its_problems(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: x\ndevices: [{id: a, driver: nosuch}]\n")
    out = subprocess.run(
        [str(CONSOLE), "runbook", "-c", str(site)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "unknown driver 'nosuch'" in out.stderr


def test_reference_is_generated_and_current() -> None:
    """docs/reference.md cannot drift: it is what the code and profiles say today."""
    from facility_agent.tools import reference_docs as reference

    text = reference.render()
    assert (ROOT / "docs" / "reference.md").read_text() == text, (
        "docs/reference.md is out of date: "
        "python -m facility_agent.tools.reference_docs > docs/reference.md"
    )
    # Every event type the engine, agent and trap listener raise is in it, and vice versa.
    sources = "".join(
        (ROOT / f).read_text()
        for f in (
            "facility_agent/policy/engine.py",
            "facility_agent/runtime/state.py",
            "facility_agent/runtime/agent.py",
            "drivers/snmp/traps.py",
            "facility_agent/core/model.py",
            "facility_agent/actions/ssh_hosts.py",
        )
    )
    for ev in reference.other_events():
        kind = ev["type"]
        assert f'"{kind}"' in sources, kind
        assert f"`{kind}`" in text
    for name in (
        "power.on_battery",
        "generator.start_failed",
        "trap.on_battery",
        "uplink.{n}.status",
    ):
        assert name in text
