"""IPMI readings to metrics, PSU redundancy, SEL records and 6-bit id strings (no I/O)."""

from __future__ import annotations

import struct

from facility_agent.drivers.ipmi.decode import (
    SelRecord,
    SensorValue,
    decode_6bit_ascii,
    psu_status,
    redundancy,
    sel_kind,
    summarize,
)


def test_6bit_ascii_matches_the_spec_example() -> None:
    assert decode_6bit_ascii([0x29, 0xDC, 0xA6]) == "IPMI"
    assert decode_6bit_ascii([]) == ""


def test_psu_status_takes_the_worst_state() -> None:
    assert psu_status(["Present"]) == "ok"
    assert psu_status(["Present", "Power input lost"]) == "input_lost"
    assert psu_status(["Present", "Failure", "Power input lost"]) == "failed"
    assert psu_status(["Present", "Predictive failure"]) == "predictive_failure"
    assert psu_status([]) == "absent"


def test_redundancy() -> None:
    assert redundancy(["ok", "ok"]) == "ok"
    assert redundancy(["ok", "input_lost"]) == "degraded"
    assert redundancy(["failed", "input_lost"]) == "lost"
    assert redundancy([]) == "unknown"


def test_summary_with_unknown_sensor_types_and_duplicate_names() -> None:
    sensors = [
        SensorValue("Inlet Temp", "Temperature", 21.0, "°C", 0, ()),
        SensorValue("PS1 Status", "Power Supply", None, "", 0, ("Present",)),
        SensorValue("PS2 Status", "Power Supply", None, "", 2, ("Present", "Failure")),
        SensorValue("Widget", "Unknown", None, "", 0, ("state 3",)),
        SensorValue("Widget", "OEM reserved", 7.0, "", 0, ()),
        SensorValue("PSU1 Power", "Power Supply", 120.0, "W", 0, ()),
        SensorValue("PSU2 Power", "Power Supply", 0.0, "W", 0, ()),
    ]
    s = summarize(sensors, powered=True)
    m = s.metrics
    assert m["psu.1.status"] == "ok" and m["psu.2.status"] == "failed"
    assert m["psu.redundancy"] == "degraded"
    assert m["server.power"] == 120.0  # no system sensor: the sum of the W sensors
    assert m["ambient.temperature"] == 21.0
    assert m["sensor.widget.states"] == "state 3" and m["sensor.widget_.value"] == 7.0
    assert set(s.flags) == {"POWER_ON", "PSU_FAIL", "NOT_REDUNDANT", "SENSOR_CRIT"}


def test_sel_kinds() -> None:
    def rec(stype: int, offset: int, deassert: bool = False, rtype: int = 2) -> SelRecord:
        raw = struct.pack("<HBI", 7, rtype, 1000) + bytes([0x20, 0, 4, stype, 9])
        raw += bytes([(0x80 if deassert else 0) | 0x6F, offset, 0xFF, 0xFF])
        return SelRecord.parse(raw)

    assert sel_kind(rec(0x08, 1)) == "psu_failure"
    assert sel_kind(rec(0x08, 3)) == "psu_input_lost"
    assert sel_kind(rec(0x09, 4)) == "ac_lost"
    assert sel_kind(rec(0x08, 3, deassert=True)) is None
    assert sel_kind(rec(0x08, 1, rtype=0xE0)) is None  # OEM record
    assert rec(0x08, 1).record_id == 7


def test_unavailable_sensors_are_unknown_not_readings() -> None:
    sensors = [
        SensorValue("Inlet Temp", "Temperature", None, "°C", 0, (), unavailable=True),
        SensorValue("Sys Power", "Current", None, "W", 0, (), unavailable=True),
        SensorValue("PSU1 Status", "Power Supply", None, "", 0, ("Presence detected",)),
        SensorValue("PSU2 Status", "Power Supply", None, "", 0, (), unavailable=True),
    ]
    s = summarize(sensors, True)
    assert s.unknown == (
        "ambient.temperature",
        "psu.2.status",
        "psu.redundancy",
        "sensor.inlet_temp.health",
        "sensor.inlet_temp.value",
        "sensor.psu2_status.health",
        "sensor.psu2_status.states",
        "sensor.sys_power.health",
        "sensor.sys_power.value",
        "server.power",
    )
    for name in s.unknown:
        assert name not in s.metrics
    assert s.metrics["psu.1.status"] == "ok" and s.metrics["psu.count"] == 2
    assert "NOT_REDUNDANT" not in s.flags  # not known either way
    # A known bad PSU is enough to know redundancy is not ok.
    bad = SensorValue("PSU1 Status", "Power Supply", None, "", 0, ("Presence detected", "Failure"))
    s = summarize([bad, sensors[3]], True)
    assert {"PSU_FAIL", "NOT_REDUNDANT"} <= set(s.flags) and "psu.redundancy" in s.unknown
