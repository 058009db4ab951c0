"""Walks recorded from real UPS cards and PDUs (drivers/snmp/testcases/*/device.snmprec), replayed
by real net-snmp snmpd through the pass_persist helper, read by the SNMP driver with the profile the
case names, and compared with expected.yaml, which was written from the MIBs' own definitions
(units, ranges, enumerations), not from the agent's output. Each case's SOURCE.md says where the
recording comes from and what the MIB says about its odd values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import yaml

from facility_agent.drivers.snmp.driver import SnmpDeviceConfig, SnmpDriver

from .fixtures.recordings import (
    UPS_SUBTREES,
    assert_reads_as_expected,
    poll_recording,
    recording_driver,
)
from .fixtures.snmp import serve_recording

CASES = Path(__file__).parents[1] / "drivers" / "snmp" / "testcases"
NAMES = sorted(
    p.name
    for p in CASES.iterdir()
    if (p / "expected.yaml").is_file()
    # Cases naming their own subtrees are the PDU/sensor ones (test_snmp_pdu_recordings.py).
    and "subtrees" not in yaml.safe_load((p / "expected.yaml").read_text())
)


def serve(recording: Path, root: Path) -> AbstractContextManager[int]:
    """Real snmpd replaying `recording` under the UPS MIBs' subtrees."""
    return serve_recording(recording, root, UPS_SUBTREES)


@pytest.fixture
def replay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    case = CASES / request.param
    expected = yaml.safe_load((case / "expected.yaml").read_text())
    with serve(case / "device.snmprec", tmp_path) as port:
        yield port, expected


def test_there_are_at_least_five_recordings_and_one_sends_sentinels() -> None:
    assert len(NAMES) >= 5
    unknowns = [yaml.safe_load((CASES / n / "expected.yaml").read_text())["unknown"] for n in NAMES]
    assert any(unknowns)
    for name in NAMES:
        source = (CASES / name / "SOURCE.md").read_text()
        origins = ("snmpsim-data", "LibreNMS", "Centreon")
        assert "Licence" in source and any(s in source for s in origins), name


@pytest.mark.parametrize("replay", NAMES, indirect=True)
async def test_recording_reads_as_its_mib_says(replay: tuple[int, dict[str, Any]]) -> None:
    port, expected = replay
    _, sample = await poll_recording(port, expected["profile"])
    assert_reads_as_expected(sample, expected)


@pytest.mark.parametrize("replay", ["huawei-ups5000"], indirect=True)
async def test_an_unknown_is_logged_once_per_metric_not_per_poll(
    replay: tuple[int, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    port, expected = replay
    drv = recording_driver(port, expected["profile"])
    caplog.set_level(logging.WARNING, logger="facility_agent.unknown")
    try:
        for _ in range(3):
            sample = await drv.poll()
            assert "battery.runtime" in sample.unknown
    finally:
        await drv.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "facility_agent.unknown"]
    assert len(lines) == len(expected["unknown"]) == 2
    assert any("battery.runtime: -1 is outside the valid range 1..2147483647" in x for x in lines)


DETECTED = [
    n for n in NAMES if "detect" in yaml.safe_load((CASES / n / "expected.yaml").read_text())
]


def test_every_ups_family_has_a_recording_that_detection_picks() -> None:
    picked = {yaml.safe_load((CASES / n / "expected.yaml").read_text())["detect"] for n in DETECTED}
    assert {"eaton-mge", "huawei-ups", "cyberpower-cps"} <= picked


@pytest.mark.parametrize("replay", DETECTED, indirect=True)
async def test_profile_auto_picks_the_profile_the_sysobjectid_and_probes_name(
    replay: tuple[int, dict[str, Any]],
) -> None:
    """The default (`profile: auto`) reads sysObjectID and the probes and names its choice."""
    port, expected = replay
    drv = recording_driver(port)
    try:
        sample = await drv.poll()
    finally:
        await drv.close()
    assert drv.choice is not None
    assert sample.metrics["driver.profile"] == expected["detect"] == drv.choice.profile
    reason = str(sample.metrics["driver.profile.reason"])
    assert "answers" in reason
    if expected["detect"] in ("eaton-mge", "cyberpower-cps"):  # named by their sysObjectID
        assert reason.startswith("sysObjectID 1.3.6.1.4.1.")
        assert " is under " in reason
    if expected["detect"] == expected["profile"]:
        assert list(sample.status) == expected["status"]
        assert sorted(sample.unknown) == expected["unknown"]
        assert set(sample.metrics) == {
            *expected["metrics"],
            "driver.profile",
            "driver.profile.reason",
        }


@pytest.mark.parametrize(
    "replay", ["huawei-ups5000-hwmib", "cyberpower-ol2200rtxl2u"], indirect=True
)
async def test_profile_auto_works_on_an_snmpv1_agent(replay: tuple[int, dict[str, Any]]) -> None:
    """A v1 agent fails a whole GET on the first probe it lacks; detection still picks."""
    port, expected = replay
    cfg = SnmpDeviceConfig(
        id="rec", driver="snmp", host="127.0.0.1", port=port, version="1", timeout=5.0
    )
    drv = SnmpDriver(cfg)
    try:
        sample = await drv.poll()
    finally:
        await drv.close()
    assert sample.metrics["driver.profile"] == expected["detect"]
    assert list(sample.status) == expected["status"]
