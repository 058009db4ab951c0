"""Device families added for issue 17, each proven on a walk of a real unit: Tripp Lite UPS,
PDU and ATS (TRIPPLITE-PRODUCTS), Vertiv/Liebert UPS (LIEBERT-GP-FLEXIBLE-MIB), Socomec Net Vision
(SOCOMECUPS7-MIB), and the first real recordings of hpe-epdu, apc-rats, eaton-epdu and
apc-powernet-ups. Each walk
is replayed by real net-snmp snmpd through the pass_persist helper, read by the SNMP driver, and
compared with expected.yaml, written from the MIB's own definitions; `profile: auto` must pick
the same profile. SOURCE.md gives each recording's origin and licence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from facility_agent.drivers.snmp.detect import NoProfileError

from .fixtures.recordings import assert_reads_as_expected, poll_recording
from .fixtures.snmp import serve_recording

CASES = Path(__file__).parents[1] / "drivers" / "snmp" / "testcases"
#: The profiles this file proves.
PROFILES = {
    "tripplite-ups",
    "tripplite-pdu",
    "tripplite-ats",
    "liebert-gp",
    "socomec-netvision",
    "hpe-epdu",
    "apc-rats",
    "eaton-epdu",
    "apc-powernet-ups",
}


def _expected(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CASES / name / "expected.yaml").read_text())
    return data


NAMES = sorted(
    p.name
    for p in CASES.iterdir()
    if (p / "expected.yaml").is_file() and _expected(p.name)["profile"] in PROFILES
)


@pytest.fixture
def replay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    expected = _expected(request.param)
    recording = CASES / request.param / "device.snmprec"
    with serve_recording(recording, tmp_path, expected["subtrees"]) as port:
        yield port, expected


def test_every_family_has_a_real_recording_with_its_origin_and_licence() -> None:
    assert {_expected(n)["profile"] for n in NAMES} == PROFILES
    for name in NAMES:
        source = (CASES / name / "SOURCE.md").read_text()
        assert "Origin" in source and "Licence" in source and "sha256" in source, name
        assert any(s in source for s in ("LibreNMS", "snmpsim-data", "Centreon")), name
    # Real units send "not a reading" values; several of these walks do.
    assert sum(bool(_expected(n)["unknown"]) for n in NAMES) >= 3


@pytest.mark.parametrize("replay", NAMES, indirect=True)
async def test_recording_reads_as_its_mib_says(replay: tuple[int, dict[str, Any]]) -> None:
    port, expected = replay
    _, sample = await poll_recording(port, expected["profile"])
    assert_reads_as_expected(sample, expected)


@pytest.mark.parametrize("replay", NAMES, indirect=True)
async def test_profile_auto_picks_the_family_and_says_why(
    replay: tuple[int, dict[str, Any]],
) -> None:
    port, expected = replay
    drv, sample = await poll_recording(port, "auto")
    assert expected["detect"] == expected["profile"]
    assert sample.metrics["driver.profile"] == expected["profile"]
    assert drv.choice is not None and drv.choice.profile == expected["profile"]
    reason = str(sample.metrics["driver.profile.reason"])
    assert " is under " in reason and "answers" in reason, reason
    assert list(sample.status) == expected["status"]
    assert sorted(sample.unknown) == sorted(expected["unknown"])


async def test_a_liebert_cooling_unit_is_not_taken_for_a_ups(tmp_path: Path) -> None:
    """Same sysObjectID as the Liebert UPSes, but no UPS points: detection refuses it with the
    sysObjectID and the command that records a walk, instead of reading it as a UPS."""
    expected = _expected("liebert-pex-cooling")
    recording = CASES / "liebert-pex-cooling" / "device.snmprec"
    with (
        serve_recording(recording, tmp_path, expected["subtrees"]) as port,
        pytest.raises(NoProfileError) as err,
    ):
        await poll_recording(port, "auto")
    text = str(err.value)
    assert expected["sysobjectid"] in text
    assert "facility-agent snmp record 127.0.0.1" in text


async def test_a_scalar_falls_back_when_the_agent_lacks_its_first_oid(tmp_path: Path) -> None:
    """`fallback:` (apc-powernet-ups: upsHighPrec* first, upsAdv* on cards without them). The walk
    here is written for the test, not recorded: the upsAdv* values of an older card only."""
    walk = tmp_path / "adv-only.snmprec"
    walk.write_text(
        "1.3.6.1.2.1.1.2.0|6|1.3.6.1.4.1.318.1.3.2.7\n"
        "1.3.6.1.4.1.318.1.1.1.1.1.1.0|4|Smart-UPS 1000\n"
        "1.3.6.1.4.1.318.1.1.1.2.2.1.0|66|87\n"  # upsAdvBatteryCapacity 87 %
        "1.3.6.1.4.1.318.1.1.1.3.2.1.0|66|231\n"  # upsAdvInputLineVoltage 231 V
        "1.3.6.1.4.1.318.1.1.1.3.3.4.0|66|499\n"  # upsHighPrecInputFrequency 49.9 Hz
        "1.3.6.1.4.1.318.1.1.1.3.2.4.0|66|50\n"  # upsAdvInputFrequency, not used: 49.9 wins
    )
    root = tmp_path / "snmpd"
    root.mkdir()
    with serve_recording(walk, root, [".1.3.6.1.4.1.318"]) as port:
        _, sample = await poll_recording(port, "apc-powernet-ups")
    assert sample.metrics["battery.charge"] == 87
    assert sample.metrics["input.voltage"] == 231
    assert sample.metrics["input.frequency"] == pytest.approx(49.9)
    assert "output.voltage" not in sample.metrics and "output.voltage" not in sample.unknown
