"""`drill --dry-run` with a `vm:` and a `containers:` step: the report lists what would be
stopped, in order, and nothing is touched. The drill is its own process, so the guests live in
a real libvirtd and the containers in a real Podman service, both read back from here."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import libvirt
import yaml

from tests.fixtures.libvirtd import Libvirtd
from tests.fixtures.podman import Podman
from tests.test_policy_site import nut_ups_pair
from tests.test_step_vm import guest


def test_drill_dry_run_lists_guests_and_containers_and_touches_nothing(
    tmp_path: Path, libvirtd: Libvirtd, podman_service: Podman
) -> None:
    own = libvirt.open(libvirtd.uri)
    for name in ("db-1", "web-1"):
        own.defineXML(guest(name)).create()
    box = f"box-{uuid.uuid4().hex[:6]}"
    podman_service.run(box)
    try:
        site = {
            "site": "lab1",
            "state_dir": str(tmp_path / "state"),
            "devices": nut_ups_pair("10.9.9.9"),
            "groups": [{"id": "ups", "members": ["ups-a", "ups-b"], "min": 1, "hold": 0.2}],
            "shutdown": {
                "group": "ups",
                "triggers": {"on_battery_for": 1, "hold": 0.2, "runtime_margin": None},
                "stages": [
                    {
                        "name": "guests",
                        "steps": [
                            {"vm": {"uri": libvirtd.uri, "guests": ["db-*", "web-*"]}},
                            {"containers": {"socket": podman_service.url, "names": [box]}},
                        ],
                    },
                ],
            },
            "recovery": {"stable_for": 1, "min_charge": 0, "stages": []},
        }
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(site))
        argv = [sys.executable, "-m", "facility_agent.cli", "drill", "-c", str(path)]
        argv += ["--scenario", "demo-outage", "--speed", "3", "--dry-run"]
        argv += ["--report", str(tmp_path / "report.txt")]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        report = (tmp_path / "report.txt").read_text()
        assert "dry run: would shut down db-1 then web-1 (up to 120 s each, then destroy)" in report
        assert f"dry run: would stop {box} (SIGKILL after 10 s)" in report
        assert own.lookupByName("db-1").isActive() and own.lookupByName("web-1").isActive()
        assert podman_service.status(box) == "running"
    finally:
        podman_service.cli("rm", "--force", "--time", "0", box, check=False)
