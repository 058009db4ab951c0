"""The NUT value rules (config/nut-ranges.yaml, drivers/nut/ranges.py), without I/O.

The recorded dumps (test_nut_ddl.py) prove the bundled rules on real devices; these pin down
the rule language itself and the sentinels named in the data file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from facility_agent.drivers.nut import ranges as nut_ranges
from facility_agent.drivers.nut.driver import convert_metric
from facility_agent.drivers.nut.ranges import RangeFileError, Ranges, Rule, parse

BUNDLED = nut_ranges.load()


def judge(name: str, text: str) -> object:
    """The value to publish, or the string 'unknown'."""
    verdict = BUNDLED.judge(name, text)
    return "unknown" if verdict.unknown else verdict.value


@pytest.mark.parametrize(
    ("name", "text", "want"),
    [
        # NUT's numeric format allows leading zeros (docs/nut-names.txt, "Numeric format").
        ("ups.load", "016", 16),
        ("battery.voltage", "082.9", 82.9),
        ("battery.runtime", "01480", 1480),
        ("battery.charge", "100.00", 100.0),
        # Out of range: not a reading.
        ("battery.charge", "-197.6", "unknown"),
        ("battery.charge", "255", "unknown"),
        ("ups.temperature", "302.0", "unknown"),
        ("ambient.1.temperature", "-273", "unknown"),
        ("input.voltage", "2320.00", "unknown"),
        ("input.frequency", "5990.0", "unknown"),
        ("output.powerfactor", "57.00", "unknown"),
        ("input.phases", "0.00", "unknown"),
        # Sentinels inside the range.
        ("battery.runtime", "65535", "unknown"),
        ("outlet.1.delay.shutdown", "2147483647", "unknown"),
        ("ups.timer.shutdown", "65535", "unknown"),
        ("input.bypass.frequency", "409.50", "unknown"),
        # HID's "no countdown" is a state, not an unknown; its x60 scaling is not.
        ("ups.timer.shutdown", "-1", -1),
        ("ups.timer.shutdown", "-60", "unknown"),
        # Text where NUT defines a number.
        ("ups.efficiency", "LoadTooLow", "unknown"),
        ("battery.runtime", "nan", "unknown"),
        # Signed where NUT's quantity is signed.
        ("battery.current", "-0.915", -0.915),
        ("input.current", "-0.314", "unknown"),
        # Opaque strings stay text, however numeric they look.
        ("ups.vendorid", "0463", "0463"),
        ("ups.mfr", "1", "1"),
        ("ups.start.auto", "128.00", "128.00"),
        ("input.transfer.reason", "1.00", "1.00"),
        ("driver.parameter.voltage", "{1.9216,-0.0977}", "{1.9216,-0.0977}"),
        ("input.voltage.status", "critical-low", "critical-low"),
        # Names no rule matches keep the plain heuristic and no range.
        ("ups.debug.V", "-5", -5),
        ("experimental.output.energy", "525890", 525890),
        ("vendor.thing", "0012", "0012"),
        # Three-phase and indexed names.
        ("input.bypass.L1-N.voltage", "232.00", 232.0),
        ("output.L1.power.percent", "0.00", 0.0),
        ("outlet.2.current.high.warning", "12", 12),
        ("ambient.1.humidity.alarm.high", "60.00", 60.0),
    ],
)
def test_bundled_rules(name: str, text: str, want: object) -> None:
    got = judge(name, text)
    assert got == want and type(got) is type(want)


def test_patterns_single_and_any_segments() -> None:
    ranges = Ranges(
        [
            Rule(match=("outlet.*.current",), min=0, max=1),
            Rule(match=("**.voltage",), min=0, max=2),
            Rule(match=("battery.**",), text=True),
        ]
    )
    assert ranges.rule("outlet.3.current") is ranges.rules[0]
    assert ranges.rule("outlet.current") is None  # `*` is exactly one segment
    assert ranges.rule("outlet.3.4.current") is None
    assert ranges.rule("voltage") is ranges.rules[1]  # `**` may be no segment
    assert ranges.rule("input.bypass.L1-N.voltage") is ranges.rules[1]
    assert ranges.rule("input.voltagex") is None  # whole segments only
    assert ranges.rule("battery.voltage") is ranges.rules[1]  # first match wins
    assert ranges.rule("battery.type") is ranges.rules[2]


def test_integer_sentinel_and_bounds_reasons() -> None:
    ranges = Ranges([Rule(match=("x.count",), min=0, max=10, sentinels=(7,), integer=True)])
    assert ranges.judge("x.count", "3").value == 3
    assert ranges.judge("x.count", "3.5").why == "3.5 is not a whole number"
    assert ranges.judge("x.count", "7").why == "7 is a 'not measured' sentinel"
    assert ranges.judge("x.count", "11").why == "11 is outside 0..10"
    assert ranges.judge("x.count", "1e3").why == "'1e3' is not a number"
    assert ranges.judge("x.count", "").why == "'' is not a number"


def test_endless_digits_do_not_crash() -> None:
    """Python refuses int() of over 4300 digits; a hostile upsd must not crash the poll."""
    digits = "1" * 5000
    assert (
        BUNDLED.judge("battery.charge", digits).why == "5000 characters are too long for a reading"
    )
    assert BUNDLED.judge("ups.debug.x", digits).value == digits


def test_convert_metric_gives_types_only() -> None:
    """The type question alone: an out-of-range value keeps its number, text stays text."""
    assert convert_metric("ups.serial", "123456") == "123456"
    assert convert_metric("ups.load", "016") == 16
    assert convert_metric("battery.charge", "-197.6") == "-197.6"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [{match: 'a..b', min: 0}]", "not a name pattern"),
        ("rules: [{match: a.b, minimum: 0}]", "Extra inputs"),
        ("rules: {a: b}", "rules"),
        ("rules: [{match: a, min: [}", "not valid YAML"),
    ],
)
def test_bad_rule_files_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(RangeFileError, match=message):
        parse(text, "test.yaml")


def test_load_by_path_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("rules:\n  - {match: battery.charge, min: 0, max: 50}\n")
    assert nut_ranges.load(str(path)).judge("battery.charge", "60").unknown
    with pytest.raises(RangeFileError, match="cannot read"):
        nut_ranges.load(str(tmp_path / "absent.yaml"))
