"""A real drill on the simulated site with every kind of target in one plan, one stage each:
libvirt guests (a real libvirtd serving the test driver), a container (a real Podman service),
an SSH host (real sshd whose forced command records) and a upsmon secondary (Debian's real
upsmon following the drill's NUT face). Each target is acted on once, in stage order, and the
report puts each step's time against the battery runtime.

Every time compared comes from the target's own side where it can: libvirt's lifecycle
events on the test's own connection, Podman's event log, the forced command's clock and
upsmon's SHUTDOWNCMD script; the journal only for what the agent itself did.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest
import yaml

from facility_agent.policy.journal import Journal
from tests.fixtures.libvirtd import Libvirtd
from tests.fixtures.podman import Podman
from tests.fixtures.procs import Proc, free_port
from tests.fixtures.simulator import outage_scenario
from tests.fixtures.sshd import Sshd
from tests.fixtures.upsmon import start_upsmon
from tests.test_step_vm import guest

SCENARIO = outage_scenario("every-kind", back_at=30, duration=36, fail_at=2, speed=1)

NUT_PW = "face-pw-3f9c"


@dataclass
class Lifecycle:
    """libvirt lifecycle events of the test's own connection: (wall time, guest, event)."""

    events: list[tuple[float, str, int]] = field(default_factory=list)

    def times(self, name: str, kind: int) -> list[float]:
        return [t for t, n, k in self.events if n == name and k == kind]


_event_loop_started = False


def _event_loop() -> None:
    """libvirt's default event loop, once per process, on a daemon thread."""
    global _event_loop_started
    if _event_loop_started:
        return
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()
    _event_loop_started = True


@pytest.fixture
def guests(libvirtd: Libvirtd) -> Iterator[tuple[Any, Lifecycle]]:
    _event_loop()
    own = libvirt.open(libvirtd.uri)
    seen = Lifecycle()

    def on_event(_conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
        seen.events.append((time.time(), dom.name(), event))

    callback = own.domainEventRegisterAny(
        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None
    )
    for name in ("db-1", "web-1"):
        own.defineXML(guest(name)).create()
    try:
        yield own, seen
    finally:
        own.domainEventDeregisterAny(callback)
        own.close()


def podman_events(pod: Podman, name: str) -> list[tuple[float, str]]:
    """(wall time, status) of every event Podman logged for the container."""
    out = pod.cli(
        "events",
        "--stream=false",
        "--filter",
        f"container={name}",
        "--format",
        "{{.Time.UnixNano}} {{.Status}}",
    )
    return [(int(t) / 1e9, s) for t, _, s in (line.partition(" ") for line in out.splitlines())]


def site(state: Path, uri: str, pod: Podman, box: str, sshd: Sshd, known: Path) -> dict[str, Any]:
    ups = {
        "driver": "nut",
        "host": "127.0.0.1",
        "interval": "300ms",
        "timeout": "1s",
        "lost_after": 3,
        "username": "admin",
        "password": "adminpass",
    }
    return {
        "site": "everykind",
        "state_dir": str(state),
        "devices": [{"id": u, "ups": u, **ups} for u in ("ups-a", "ups-b")],
        "groups": [{"id": "ups", "members": ["ups-a", "ups-b"], "min": 1, "hold": "500ms"}],
        # The site's own face address is never used by a drill: --nut-face-listen says where.
        "nut_server": {
            "listen": "0.0.0.0:3493",
            "users": [{"name": "secondary", "password": "${NUT_SECONDARY_PW}"}],
        },
        "shutdown": {
            "group": "ups",
            "triggers": {"on_battery_for": "1s", "hold": "500ms", "runtime_margin": None},
            "stages": [
                {
                    "name": "guests",
                    "steps": [{"vm": {"uri": uri, "guests": ["db-*", "web-*"]}, "timeout": "20s"}],
                },
                {
                    "name": "containers",
                    "steps": [
                        {
                            "containers": {"socket": pod.url, "names": [box], "grace": "1s"},
                            "timeout": "30s",
                        }
                    ],
                },
                {
                    "name": "remote-hosts",
                    "steps": [
                        {
                            "ssh": {
                                "host": "127.0.0.1",
                                "port": sshd.port,
                                "run": ["sleep", "1"],
                                "known_hosts_file": str(known),
                                "key_file": str(sshd.client_key),
                            },
                            "timeout": "15s",
                        }
                    ],
                },
                {"name": "secondaries", "notify_nut_secondaries": True, "steps": [{"wait": "3s"}]},
            ],
        },
        "recovery": {"stable_for": "1s", "min_charge": 0},
    }


def shutdown_targets(state: Path) -> tuple[list[tuple[int, int, str, str, float]], list[str]]:
    """From the drill journal: (stage, step, target, state, at) of the shutdown run's targets,
    and the state of each of its steps in plan order."""
    journal = Journal(state / "drill-journal.sqlite")
    try:
        runs = journal.runs("shutdown")
        assert len(runs) == 1, runs
        run = runs[0]
        assert run.state == "completed", run
        steps = [s.state for s in sorted(journal.steps(run.id), key=lambda s: (s.stage, s.step))]
        rows = journal._db.execute(
            "SELECT stage, step, target, state, at FROM targets WHERE run_id = ?"
            " ORDER BY stage, step, seq",
            (run.id,),
        ).fetchall()
    finally:
        journal.close()
    return [tuple(r) for r in rows], steps


def test_drill_stops_every_kind_once_in_stage_order_and_reports_against_runtime(
    tmp_path: Path,
    guests: tuple[Any, Lifecycle],
    podman_service: Podman,
    sshd_server: Sshd,
    procs: Callable[..., Proc],
    libvirtd: Libvirtd,
) -> None:
    own, lifecycle = guests
    box = f"box-{uuid.uuid4().hex[:6]}"
    podman_service.run(box)
    try:
        scenario = tmp_path / "every-kind.yaml"
        scenario.write_text(SCENARIO)
        state = tmp_path / "state"
        known = sshd_server.known_hosts(tmp_path / "known_hosts")
        path = tmp_path / "site.yaml"
        path.write_text(
            yaml.safe_dump(site(state, libvirtd.uri, podman_service, box, sshd_server, known))
        )
        face = f"127.0.0.1:{free_port()}"
        upsmon = start_upsmon(
            tmp_path / "upsmon", face, ["ups-a", "ups-b"], "secondary", NUT_PW, procs
        )
        argv = [sys.executable, "-m", "facility_agent.cli", "drill", "-c", str(path)]
        argv += ["--scenario", str(scenario), "--nut-face-listen", face]
        argv += ["--report", str(tmp_path / "report.txt")]
        began = time.time()
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "NUT_SECONDARY_PW": NUT_PW},
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        report = (tmp_path / "report.txt").read_text()

        # The agent's side: each target journaled once, stopped, in stage order.
        rows, steps = shutdown_targets(state)
        assert steps == ["done"] * 4, steps
        assert [(r[0], r[2], r[3]) for r in rows] == [
            (0, "db-1", "stopped"),
            (0, "web-1", "stopped"),
            (1, box, "stopped"),
        ]
        # libvirt's side: each guest stopped once (db-1 before web-1), started once again by
        # the recovery; the driver's own `test` guest never touched.
        stopped = libvirt.VIR_DOMAIN_EVENT_STOPPED
        started = libvirt.VIR_DOMAIN_EVENT_STARTED
        db_stop, web_stop = lifecycle.times("db-1", stopped), lifecycle.times("web-1", stopped)
        assert len(db_stop) == 1 and len(web_stop) == 1, lifecycle.events
        assert began < db_stop[0] <= web_stop[0]
        # Defined and started by the test (one start each), then again by the recovery.
        assert len(lifecycle.times("db-1", started)) == 2, lifecycle.events
        assert len(lifecycle.times("web-1", started)) == 2, lifecycle.events
        assert not lifecycle.times("test", stopped)
        assert own.lookupByName("db-1").isActive() and own.lookupByName("web-1").isActive()
        # Podman's side: it died once (the stop, after the guests), and was started once
        # again by the recovery (after its first start by the test).
        events = podman_events(podman_service, box)
        stops = [t for t, s in events if s == "died"]
        starts = [t for t, s in events if s == "start"]
        assert len(stops) == 1 and len(starts) == 2, events
        assert web_stop[0] < stops[0] < starts[1]
        assert podman_service.status(box) == "running"
        # The SSH host's side: asked once, after the container stopped.
        assert sshd_server.asked == ["sleep 1"]
        (asked_at, _), *_ = sshd_server.asked_at
        assert stops[0] < asked_at
        # upsmon's side: exactly one SHUTDOWNCMD, after the SSH stage ran (the notify stage).
        shutdowns = upsmon.shutdowns()
        assert len(shutdowns) == 1, shutdowns
        assert asked_at + 1 < shutdowns[0], (asked_at, shutdowns)
        assert upsmon.notified("FSD") == {"ups-a", "ups-b"}
        assert NUT_PW not in upsmon.proc.output() and NUT_PW not in out.stdout + out.stderr

        # The report: each step ok with its time after the decision against the runtime.
        assert "time to decide:" in report and "on battery for 1 s" in report
        assert re.search(r"steps: took, ended after the decision against \d+ s of battery", report)
        step_lines = [line for line in report.splitlines() if line.startswith("    step ")]
        assert len(step_lines) == 4, report
        expect = ["vm db-*, web-*", f"containers {box}", "ssh 127.0.0.1: sleep 1", "wait 3 s"]
        ends = []
        for line, label in zip(step_lines, expect, strict=True):
            found = re.match(
                r"    step ok +[\d.]+ s  \+ *([\d.]+) s \(\d+ s left, [\d.]+% used\)", line
            )
            assert found, line
            assert label in line, (label, line)
            ends.append(float(found.group(1)))
        assert ends == sorted(ends)
        assert re.search(r"NUT secondary secondary@127\.0\.0\.1 saw FSD at \+[\d.]+ s", report)
        assert "plan completed after" in report and "margin" in report
        assert "time to recover (RTO):" in report
        # What the drill taught: each target's time, learned for the next estimate.
        assert "learned target times" in report
        assert re.search(rf"ssh root@127\.0\.0\.1:{sshd_server.port} sleep 1 +[\d.]+ s", report)
        assert re.search(r"vm test\+unix:///default\S* db-1 +[\d.]+ s", report)
        assert re.search(rf"containers {re.escape(podman_service.url)} {box} +[\d.]+ s", report)
        assert "expected plan duration:" in report
    finally:
        podman_service.cli("rm", "--force", "--time", "0", box, check=False)
