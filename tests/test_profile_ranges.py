"""Every metric of every shipped profile says what a reading is: its valid raw range (and any
sentinels), so a card's "unknown" (-1, 0xFFFF ...) never becomes a value. The loaders enforce it;
this test walks the shipped files so a new profile without ranges cannot slip in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from facility_agent.drivers.modbus import profile as modbus_profile
from facility_agent.drivers.snmp import profile as snmp_profile
from facility_agent.drivers.snmp.profile import Column, ProfileError
from facility_agent.drivers.valid import not_a_reading, parse_range

PROFILES = Path(__file__).parents[1] / "config" / "profiles"


def shipped() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def test_every_shipped_profile_is_read_by_one_loader() -> None:
    snmp = set(snmp_profile.bundled_names())
    modbus = {n for n in shipped() if n not in snmp}
    assert snmp and modbus and snmp | modbus == set(shipped())
    for name in modbus:
        modbus_profile.load_profile(name)


@pytest.mark.parametrize("name", snmp_profile.bundled_names())
def test_every_snmp_metric_has_a_range(name: str) -> None:
    profile = snmp_profile.load_profile(name)
    columns = dict(profile.metrics)
    for prefix, table in profile.tables.items():
        columns.update({f"{prefix}.*.{c}": col for c, col in table.columns.items()})
    assert columns
    for metric, col in columns.items():
        if col.type == "string":
            assert col.range is None, metric
        else:
            assert col.range is not None, f"{name}: {metric} has no range"
            lo, hi = col.range
            assert lo <= hi, metric


@pytest.mark.parametrize("name", [n for n in shipped() if n not in snmp_profile.bundled_names()])
def test_every_modbus_point_has_a_range(name: str) -> None:
    profile = modbus_profile.load_profile(name)
    for point in profile.points:
        if point.type in ("bool", "alarm4"):
            continue
        assert point.range is not None, f"{name}: {point.name} has no range"


def test_dse_gencomm_sentinels_are_not_readings() -> None:
    dse = {p.name: p for p in modbus_profile.load_profile("dse-gencomm").points}
    for raw in (0xFFFF, 0xFFF8):
        assert not_a_reading(
            raw, dse["engine.oil.pressure"].range, dse["engine.oil.pressure"].sentinels
        )
    for raw in (0x7FFF, 0x7FF8):
        p = dse["engine.coolant.temperature"]
        assert not_a_reading(raw, p.range, p.sentinels)
    p = dse["generator.voltage"]
    assert not_a_reading(0xFFFFFFFF, p.range, p.sentinels)
    assert not_a_reading(2314, p.range, p.sentinels) is None


def test_snmp_loader_requires_a_range_on_numbers(tmp_path: Path) -> None:
    path = tmp_path / "card.yaml"
    path.write_text(
        "protocol: snmp\nname: card\nmetrics:\n  battery.charge: {oid: 1.3.6.1.2.1.33.1.2.4.0}\n"
    )
    with pytest.raises(ProfileError, match="range: is required"):
        snmp_profile.load_profile(str(path))
    with pytest.raises(ValidationError, match="text has no range"):
        Column(oid="1.3.6.1.2.1.1.1.0", type="string", range="0..1")
    col = Column(oid="1.3.6.1.2.1.33.1.2.4.0", range="0..100", sentinels=[0xFF])
    assert col.range == (0, 100) and col.sentinels == [255]


def test_range_notation() -> None:
    assert parse_range("0..100") == (0, 100)
    assert parse_range("-2147483648..2147483647") == (-(2**31), 2**31 - 1)
    assert parse_range("0x0..0xFFF7") == (0, 0xFFF7)
    assert parse_range([-50, 200.5]) == (-50, 200.5)
    for bad in ("100..0", "0-100", "..5", [1], "a..b"):
        with pytest.raises(ValueError):
            parse_range(bad)
    assert not_a_reading(-1, (0, 100), []) == "-1 is outside the valid range 0..100"
    assert not_a_reading(55, (0, 100), [55]) is not None
    assert not_a_reading(float("nan"), (0, 100), []) is not None
    assert not_a_reading(100, (0, 100), []) is None
