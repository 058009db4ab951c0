"""`profile: auto` is the default: a site file that names no profile reads every unit the suite
has a real recording of. Each walk (drivers/snmp/testcases/*/device.snmprec) is replayed by its
own real net-snmp snmpd, as a floor of devices would answer; the site file is loaded as the agent
loads it, each device's driver comes from the registry, and one poll must pick the profile its
case names under `detect:` and read what its expected.yaml says. Real agents answer a GET on a
bare table column with noSuchObject, so a probe naming one (CyberPower's load table, Raritan's
inlet sensors, Sentry4's cords, ENTITY-SENSOR) is asked again by GETNEXT, or auto refuses the unit.
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from facility_agent.config.site import load_site
from facility_agent.core.driver import Driver
from facility_agent.core.model import Sample
from facility_agent.core.registry import driver_class

from .fixtures.recordings import UPS_SUBTREES, assert_reads_as_expected
from .fixtures.snmp import serve_recording

CASES = Path(__file__).parents[1] / "drivers" / "snmp" / "testcases"


def _cases() -> dict[str, dict[str, Any]]:
    out = {}
    for case in sorted(CASES.iterdir()):
        if (case / "expected.yaml").is_file():
            out[case.name] = yaml.safe_load((case / "expected.yaml").read_text())
    return out


def test_every_recorded_unit_names_what_profile_auto_picks() -> None:
    """Every case says which profile detection must pick, so none is left to a named profile;
    `none` is a unit auto must refuse (the Liebert cooling unit, the switch: if-mib is named)."""
    refused = set()
    for name, expected in _cases().items():
        assert "detect" in expected or expected["profile"] == "none", f"{name}: no `detect:` key"
        if expected.get("detect", "none") == "none":
            refused.add(name)
    assert refused == {"liebert-pex-cooling", "cisco-c3560-ifmib"}


async def _poll(driver: Driver) -> Sample:
    try:
        return await driver.poll()
    finally:
        await driver.close()


async def test_a_site_file_without_profiles_reads_every_recorded_unit(tmp_path: Path) -> None:
    cases = {n: e for n, e in _cases().items() if e.get("detect", "none") != "none"}
    assert len(cases) >= 30
    with ExitStack() as peers:
        ports = {}
        for name, expected in cases.items():
            root = tmp_path / name
            root.mkdir()
            subtrees = expected.get("subtrees", UPS_SUBTREES)
            recording = CASES / name / "device.snmprec"
            ports[name] = peers.enter_context(serve_recording(recording, root, subtrees))
        site = tmp_path / "site.yaml"
        devices = [
            {"id": name, "driver": "snmp", "host": "127.0.0.1", "port": port, "timeout": "5s"}
            for name, port in ports.items()
        ]
        site.write_text(yaml.safe_dump({"site": "floor", "devices": devices}))
        config = load_site(site)
        assert [d.id for d in config.devices] == list(cases)
        assert {getattr(d, "profile", None) for d in config.devices} == {"auto"}
        drivers = [driver_class(d.driver)(d) for d in config.devices]
        samples = await asyncio.gather(*(_poll(d) for d in drivers))
    picked = {s.device: s.metrics["driver.profile"] for s in samples}
    assert picked == {name: expected["detect"] for name, expected in cases.items()}
    for sample in samples:
        expected = cases[sample.device]
        assert "answers" in str(sample.metrics.pop("driver.profile.reason")), sample.device
        del sample.metrics["driver.profile"]
        if expected["detect"] == expected["profile"]:
            assert_reads_as_expected(sample, expected)
