"""Recorded dumps of real UPS models (NUT's Device Dump Library) served by real upsd + dummy-ups.

Every case in drivers/nut/testcases/<maker-model>/ holds the `.dev` file exactly as nut-ddl has
it and an `expected.yaml` written from NUT's variable definitions: the status flags, every
metric with its value and type, and the variables whose value is not a reading (`unknown`).
All dumps run behind ONE upsd (one dummy-ups each) so the whole library costs one start-up.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from facility_agent.core.model import Sample
from facility_agent.drivers.nut.driver import NutDeviceConfig, NutDriver
from facility_agent.runtime.state import SiteState

from .fixtures.nut import NutServer, start_nut

pytestmark = pytest.mark.peer

CASES_DIR = Path(__file__).parents[1] / "drivers" / "nut" / "testcases"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "expected.yaml").is_file())


def _expected(case: str) -> dict[str, Any]:
    data = yaml.safe_load((CASES_DIR / case / "expected.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _dev(case: str) -> Path:
    (dev,) = (CASES_DIR / case).glob("*.dev")
    return dev


@pytest.fixture(scope="module")
def ddl_upsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NutServer]:
    devs = {case: _dev(case).read_text(encoding="utf-8", errors="replace") for case in CASES}
    ready = {case: " ".join(_expected(case)["status"]) for case in CASES}
    server = start_nut(tmp_path_factory.mktemp("nut-ddl"), devs, ready)
    try:
        yield server
    finally:
        server.stop()


async def _poll(server: NutServer, case: str) -> Sample:
    driver = NutDriver(
        NutDeviceConfig(id=case, driver="nut", host=server.host, port=server.port, ups=case)
    )
    try:
        sample: Sample = await driver.poll()
        return sample
    finally:
        await driver.close()


def test_the_library_is_big_and_varied() -> None:
    """At least 20 dumps from at least 8 makers, each with its source recorded."""
    assert len(CASES) >= 20
    makers = {_dev(c).name.split("__")[0] for c in CASES}
    assert len(makers) >= 8, makers
    for case in CASES:
        source = (CASES_DIR / case / "SOURCE.md").read_text(encoding="utf-8")
        assert _dev(case).name in source and re.search(r"\b[0-9a-f]{40}\b", source), case


@pytest.mark.parametrize("case", CASES)
async def test_dump_state_matches_expected(ddl_upsd: NutServer, case: str) -> None:
    expected = _expected(case)
    sample = await _poll(ddl_upsd, case)

    assert list(sample.status) == expected["status"]
    not_compared = set(expected.get("not_compared") or {})
    got = {k: v for k, v in sample.metrics.items() if not k.startswith("driver.")}
    want = expected["metrics"]
    assert set(got) - not_compared == set(want), "metric names differ"
    for name, value in want.items():
        assert got[name] == value and type(got[name]) is type(value), (
            f"{name}: got {got[name]!r} ({type(got[name]).__name__}), want {value!r}"
        )
    for name in not_compared:  # empty in the dump: served, whatever dummy-ups made of it
        assert name in sample.metrics or name in sample.unknown, name
    assert set(sample.unknown) == set(expected["unknown"] or {})
    assert not set(sample.unknown) & set(sample.metrics)
    # dummy-ups describes itself in driver.*; those are the server's, never a dump's, values.
    assert sample.metrics["driver.name"] == "dummy-ups"


async def test_unknowns_reach_the_published_state_and_are_logged_once(
    ddl_upsd: NutServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The Riello dump's sentinels: absent from the payload's metrics, named in `unknown`, and
    one log line per metric however many polls see them."""
    case = "riello-idialog-800-idg-800"
    driver = NutDriver(
        NutDeviceConfig(id=case, driver="nut", host=ddl_upsd.host, port=ddl_upsd.port, ups=case)
    )
    state = SiteState("lab")
    caplog.set_level(logging.WARNING, logger="facility_agent.drivers.nut.driver")
    try:
        for _ in range(3):
            sample = await driver.poll()
            await asyncio.sleep(0)
    finally:
        await driver.close()
    state.apply_sample("nut", sample)
    current = state.get(case)
    assert current is not None
    payload = current.payload("lab")
    assert payload["unknown"] == sorted(_expected(case)["unknown"])
    assert "battery.charge" not in payload["metrics"]
    assert payload["metrics"]["battery.voltage"] == 13.7
    lines = [r.getMessage() for r in caplog.records if "not a reading" in r.getMessage()]
    assert len(lines) == len(payload["unknown"]), lines
    assert any("battery.charge = '255'" in line and case in line for line in lines)


async def test_a_site_can_bring_its_own_rules(ddl_upsd: NutServer, tmp_path: Path) -> None:
    """`ranges:` names a rules file of the site's own; a broken one is refused at config time."""
    rules = tmp_path / "strict.yaml"
    rules.write_text("rules:\n  - {match: battery.voltage, min: 0, max: 10}\n")
    case = "riello-idialog-800-idg-800"
    cfg = NutDeviceConfig(
        id=case,
        driver="nut",
        host=ddl_upsd.host,
        port=ddl_upsd.port,
        ups=case,
        ranges=str(rules),
    )
    driver = NutDriver(cfg)
    try:
        sample = await driver.poll()
    finally:
        await driver.close()
    assert sample.unknown == ("battery.voltage",)  # 13.7 V is over this site's 10
    assert sample.metrics["battery.charge"] == 255  # the bundled rules are not in force
    with pytest.raises(ValidationError, match="cannot read"):
        NutDeviceConfig(id="x", driver="nut", host="h", ups="u", ranges=str(tmp_path / "no"))
