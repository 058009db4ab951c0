"""PDU, ATS and sensor profiles proven on walks of real units (drivers/snmp/testcases/*/ whose
expected.yaml names one of these profiles): each recording is replayed by real net-snmp snmpd
through the pass_persist helper, read by the SNMP driver, and compared with expected.yaml, which
was written from the MIB's own definitions (units, ranges, enumerations, "not available"
values), not from the agent's output. SOURCE.md gives each recording's origin and licence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from facility_agent.drivers.snmp.profile import ProfileError, load_profile

from .fixtures.recordings import assert_reads_as_expected, poll_recording
from .fixtures.snmp import serve_recording

CASES = Path(__file__).parents[1] / "drivers" / "snmp" / "testcases"
#: The profiles this file proves; their cases live beside the UPS cases.
PROFILES = {
    "entity-sensor",
    "raritan-pdu2",
    "servertech-sentry3",
    "servertech-sentry4",
    "vertiv-geist-v5",
}
NAMES = sorted(
    p.name
    for p in CASES.iterdir()
    if (p / "expected.yaml").is_file()
    and yaml.safe_load((p / "expected.yaml").read_text())["profile"] in PROFILES
)
SNMPGET = ("snmpget", "-v2c", "-c", "public", "-On", "-t", "0.3", "-r", "0")


@pytest.fixture
def replay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    case = CASES / request.param
    expected = yaml.safe_load((case / "expected.yaml").read_text())
    with serve_recording(case / "device.snmprec", tmp_path, expected["subtrees"]) as port:
        yield port, expected


def test_every_pdu_profile_has_a_real_recording_with_its_origin() -> None:
    proven = {yaml.safe_load((CASES / n / "expected.yaml").read_text())["profile"] for n in NAMES}
    assert proven == PROFILES
    for name in NAMES:
        source = (CASES / name / "SOURCE.md").read_text()
        assert "Licence" in source and "Origin" in source, name
    assert any(yaml.safe_load((CASES / n / "expected.yaml").read_text())["unknown"] for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_recording_answers_its_profiles_detection_probe(name: str) -> None:
    """The `detect:` key (read by `profile: auto`) finds the real unit: its probe OID is in the
    walk, and the unit's sysObjectID is listed unless the probe has to stand alone."""
    expected = yaml.safe_load((CASES / name / "expected.yaml").read_text())
    detect = load_profile(expected["profile"]).detect
    assert detect is not None
    assert detect.priority == (10 if expected["profile"] == "entity-sensor" else 50)
    rows = [line.split("|")[0] for line in (CASES / name / "device.snmprec").read_text().split()]
    probe = detect.probe.strip(".")
    assert any(oid == probe or oid.startswith(probe + ".") for oid in rows), probe
    sysoid = next(
        line.split("|")[2]
        for line in (CASES / name / "device.snmprec").read_text().splitlines()
        if line.startswith("1.3.6.1.2.1.1.2.0|")
    )
    listed = any(sysoid == s or sysoid.startswith(s + ".") for s in detect.sysobjectid)
    assert listed or expected.get("sysobjectid_unlisted"), sysoid


@pytest.mark.parametrize("replay", NAMES, indirect=True)
async def test_pdu_recording_reads_as_its_mib_says(replay: tuple[int, dict[str, Any]]) -> None:
    port, expected = replay
    _, sample = await poll_recording(port, expected["profile"])
    assert_reads_as_expected(sample, expected)


@pytest.mark.parametrize(
    ("column", "error"),
    [
        ({"oid": "1.3.6.1.4.1.99999.1", "range": "0..9", "decimals": "_nope"}, "decimals"),
        (
            {
                "oid": "1.3.6.1.4.1.99999.1",
                "range": "0..9",
                "unknown_when": {"column": "x", "in": [2]},
            },
            "unknown_when",
        ),
        ({"oid": "1.3.6.1.4.1.99999.1", "range": "0..9", "suffix": "1.x"}, "suffix"),
    ],
)
def test_sensor_table_keys_must_name_columns_of_their_table(
    tmp_path: Path, column: dict[str, Any], error: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "protocol": "snmp",
                "name": "bad",
                "tables": {"sensor": {"columns": {"value": column}}},
            }
        )
    )
    with pytest.raises(ProfileError, match=error):
        load_profile(str(path))


async def test_a_real_cyberpower_epdu_is_detected_by_its_load_table(tmp_path: Path) -> None:
    """A PDU44005's walk (drivers/snmp/testcases/cyberpower-pdu44005, not yet a full case: its
    SOURCE.md says why). Its card answers the ePDU2 sysObjectID, which names no profile, so the
    ePDU load table's first row must answer the probe; the bare column once did not."""
    recording = CASES / "cyberpower-pdu44005" / "device.snmprec"
    with serve_recording(recording, tmp_path, [".1.3.6.1.4.1.3808"]) as port:
        _, sample = await poll_recording(port, "auto")
    assert sample.metrics["driver.profile"] == "cyberpower-epdu"
    # Read as CPS-MIB says: ePDULoadStatusVoltage 2179 (0.1 V), ActivePower 219 W, PF 97 (0.01).
    assert sample.metrics["input.voltage"] == 217.9
    assert sample.metrics["input.realpower"] == 219
    assert sample.metrics["input.powerfactor"] == 0.97
    assert {f"outlet.{n}.status" for n in range(1, 11)} <= sample.metrics.keys()
