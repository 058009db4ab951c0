"""Feed power meters and a second genset family, each read from a replay of its register map:
pymodbus's own TCP server (tests/fixtures/pymodbus_replay.py) holds the registers of a known
operating point (drivers/modbus/testcases/<model>/registers.yaml, encoded by pymodbus, not by us),
and the modbus driver must read back what the register map says those registers mean
(expected.yaml): units, scales, word order, and the values that are not readings.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from facility_agent.drivers.modbus.driver import ModbusDeviceConfig, ModbusDriver
from facility_agent.drivers.modbus.profile import load_profile

from .fixtures.procs import Proc, free_port, tcp_open, wait_until

pytestmark = pytest.mark.peer

CASES = Path(__file__).parents[1] / "drivers" / "modbus" / "testcases"
NAMES = sorted(p.name for p in CASES.iterdir() if (p / "expected.yaml").is_file())
REPLAY = Path(__file__).parent / "fixtures" / "pymodbus_replay.py"


def test_each_new_register_map_has_a_replay() -> None:
    profiles = {yaml.safe_load((CASES / n / "expected.yaml").read_text())["profile"] for n in NAMES}
    assert profiles == {"eastron-sdm630", "schneider-pm5000", "comap-igs-nt"}
    for name in NAMES:
        expected = yaml.safe_load((CASES / name / "expected.yaml").read_text())
        profile = load_profile(expected["profile"])
        served = {
            v["what"]
            for v in yaml.safe_load((CASES / name / "registers.yaml").read_text())["values"]
        }
        # The replay sets every point of the map, so nothing is read from an unset register.
        assert served == {p.name for p in profile.points}, name


@pytest.mark.parametrize("name", NAMES)
async def test_register_map_replay_reads_as_the_map_says(
    name: str, tmp_path: Path, procs: Callable[..., Proc]
) -> None:
    case = CASES / name
    expected: dict[str, Any] = yaml.safe_load((case / "expected.yaml").read_text())
    port = free_port()
    unit = int(expected["unit"])
    procs(
        [sys.executable, str(REPLAY), str(case / "registers.yaml"), str(port), str(unit)],
        tmp_path / "replay.log",
    )
    wait_until(lambda: tcp_open(port), 10, "pymodbus replay server")
    drv = ModbusDriver(
        ModbusDeviceConfig(
            id="meter",
            driver="modbus",
            host="127.0.0.1",
            port=port,
            unit=unit,
            profile=expected["profile"],
            request_timeout=2.0,
        )
    )
    try:
        sample = await drv.poll()
    finally:
        await drv.close()
    want: dict[str, Any] = expected["metrics"]
    extra: dict[str, Any] = expected.get("derived", {})
    assert sorted(sample.metrics) == sorted({**want, **extra})
    for metric, value in {**want, **extra}.items():
        got = sample.metrics[metric]
        if isinstance(value, str | bool) or isinstance(got, str | bool):
            assert got == value, metric
        else:
            # float32 holds about 7 significant digits.
            assert got == pytest.approx(value, rel=1e-6, abs=1e-6), metric
    assert sorted(sample.unknown) == sorted(expected["unknown"])
    assert not set(sample.unknown) & set(sample.metrics)
    for flag in expected.get("flags", []):
        assert flag in sample.status
