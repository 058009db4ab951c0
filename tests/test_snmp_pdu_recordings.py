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

from facility_agent.drivers.snmp.driver import SnmpDeviceConfig, SnmpDriver
from facility_agent.drivers.snmp.profile import ProfileError, load_profile

from .fixtures.recordings import assert_reads_as_expected, poll_recording
from .fixtures.snmp import serve_recording

CASES = Path(__file__).parents[1] / "drivers" / "snmp" / "testcases"
#: The profiles this file proves; their cases live beside the UPS cases.
PROFILES = {
    "cyberpower-epdu",
    "eaton-ats2",
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
    walk (the object itself, or a subtree of it), and the unit's sysObjectID is listed unless the
    probe has to stand alone."""
    expected = yaml.safe_load((CASES / name / "expected.yaml").read_text())
    detect = load_profile(expected["profile"]).detect
    assert detect is not None
    assert detect.priority == (10 if expected["profile"] == "entity-sensor" else 50)
    lines = (CASES / name / "device.snmprec").read_text().splitlines()
    rows = [line.split("|")[0] for line in lines]
    probe = detect.probe.strip(".")
    assert any(oid == probe or oid.startswith(probe + ".") for oid in rows), probe
    sysoid = next((ln.split("|")[2] for ln in lines if ln.startswith("1.3.6.1.2.1.1.2.0|")), "")
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


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ({"oid": "1.3.6.1.4.1.99999.3", "in": [0], "not_in": [0]}, "exactly one of in, not_in"),
        ({"oid": "1.3.6.1.4.1.99999.3"}, "exactly one of in, not_in"),
        ({"oid": "nosuchObject", "in": [0]}, "neither a numeric OID"),
    ],
)
def test_a_row_filter_names_an_object_and_one_test(
    tmp_path: Path, where: dict[str, Any], error: str
) -> None:
    path = tmp_path / "bad.yaml"
    table = {"where": where, "columns": {"x": {"oid": "1.3.6.1.4.1.99999.2", "range": "0..1"}}}
    path.write_text(yaml.safe_dump({"protocol": "snmp", "name": "bad", "tables": {"t": table}}))
    with pytest.raises(ProfileError, match=error):
        load_profile(str(path))


async def test_a_real_switch_reads_as_its_named_uplinks(tmp_path: Path) -> None:
    """IF-MIB on a Cisco 3560's walk: uplinks named by ifDescr and by ifIndex, a port down, a
    name that matches nothing. snmpd answers the system group itself in the replay, so only
    the interface table is compared."""
    case = CASES / "cisco-c3560-ifmib"
    expected = yaml.safe_load((case / "expected.yaml").read_text())
    with serve_recording(case / "device.snmprec", tmp_path, expected["subtrees"]) as port:
        cfg = SnmpDeviceConfig(
            id="sw", driver="snmp", host="127.0.0.1", port=port, profile="if-mib",
            timeout=5.0, uplinks=expected["uplinks"],
        )  # fmt: skip
        drv = SnmpDriver(cfg)
        try:
            sample = await drv.poll()
        finally:
            await drv.close()
    read = {k: v for k, v in sample.metrics.items() if k.startswith("uplink.")}
    assert read == expected["metrics"]
    assert list(sample.status) == expected["status"]
    assert sorted(sample.unknown) == expected["unknown"]
    assert "device.uptime" in sample.metrics
