"""`facility-agent snmp record`: a walk of a real card (a recording replayed by real snmpd) is
written to a .snmprec with serial numbers masked; replayed in turn by snmpd, it reads the same
state through `profile: auto` as the card did."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from facility_agent.cli.main import main
from facility_agent.core.model import Sample

from .fixtures.recordings import recording_driver as driver
from .test_snmp_recordings import CASES, serve


def _poll(port: int) -> Sample:
    async def once() -> Sample:
        drv = driver(port)
        try:
            sample: Sample = await drv.poll()
            return sample
        finally:
            await drv.close()

    return asyncio.run(once())


def test_a_recorded_walk_replays_to_the_same_state_with_serials_masked(
    tmp_path: Path, capsys: object
) -> None:
    out = tmp_path / "walk.snmprec"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with serve(CASES / "eaton-93e-80-mge" / "device.snmprec", tmp_path / "a") as port:
        before = _poll(port)
        code = main(["snmp", "record", "127.0.0.1", "-p", str(port), "-o", str(out)])
    assert code == 0
    text = out.read_text()
    lines = text.splitlines()
    assert all(line.count("|") >= 2 for line in lines)
    assert "1.3.6.1.2.1.1.2.0|6|1.3.6.1.4.1.705.1" in lines
    assert "1.3.6.1.4.1.705.1.5.2.0|2|100" in lines
    # upsmgIdentSerialNumber and xupsIdent...: the card's serial never leaves the site.
    assert "4K234LXX06" not in text
    assert "1.3.6.1.4.1.705.1.1.7.0|4|MASKED" in lines
    assert any(line.startswith("1.3.6.1.2.1.1.4.0|4|MASKED") for line in lines)
    with serve(out, tmp_path / "b") as port:
        after = _poll(port)
    assert before.metrics["driver.profile"] == after.metrics["driver.profile"] == "eaton-mge"
    assert before.metrics["ups.serial"] == "4K234LXX06"
    assert after.metrics["ups.serial"] == "MASKED"
    same = {k: v for k, v in before.metrics.items() if k != "ups.serial"}
    assert {k: v for k, v in after.metrics.items() if k != "ups.serial"} == same
    assert after.status == before.status == ("OL",)
    assert after.unknown == before.unknown == ("battery.runtime",)


def test_recording_an_agent_that_does_not_answer_fails_with_one_line(
    tmp_path: Path, capsys: object
) -> None:
    import socket

    from .fixtures.procs import free_port

    port = free_port(socket.SOCK_DGRAM)
    out = tmp_path / "walk.snmprec"
    code = main(
        ["snmp", "record", "127.0.0.1", "-p", str(port), "--timeout", "0.5", "-o", str(out)]
    )
    assert code == 1
    assert not out.exists()


def test_check_probe_names_the_profile_and_why_and_a_stranger_gets_the_recorder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = tmp_path / "stranger.snmprec"
    stranger.write_text("1.3.6.1.2.1.1.2.0|6|1.3.6.1.4.1.99999.1\n")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    site = tmp_path / "site.yaml"
    case = CASES / "cyberpower-ol2200rtxl2u" / "device.snmprec"
    with serve(case, tmp_path / "a") as ups, serve(stranger, tmp_path / "b") as odd:
        site.write_text(
            "site: s\ndevices:\n"
            f"  - {{id: cps, driver: snmp, host: 127.0.0.1, port: {ups}, timeout: 5s}}\n"
            f"  - {{id: odd, driver: snmp, host: 127.0.0.1, port: {odd}, timeout: 5s}}\n"
            f"  - {{id: named, driver: snmp, host: 127.0.0.1, port: {odd}, profile: ups-mib}}\n"
        )
        assert main(["check", "-c", str(site)]) == 0  # offline: no probing
        assert "profile" not in capsys.readouterr().out
        code = main(["check", "-c", str(site), "--probe"])
    out = capsys.readouterr().out
    assert code != 0
    assert (
        "cps: profile cyberpower-cps (sysObjectID 1.3.6.1.4.1.3808.1.1.3 is under "
        "1.3.6.1.4.1.3808.1.1 and 1.3.6.1.4.1.3808.1.1.1.1.1.1.0 answers)" in out
    )
    assert "odd: " in out and "no bundled profile fits this device" in out
    assert "sysObjectID 1.3.6.1.4.1.99999.1" in out
    assert "facility-agent snmp record 127.0.0.1 -o walk.snmprec" in out
    assert "named: profile ups-mib (named in the site file)" in out


def test_status_shows_the_profile_auto_picked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from facility_agent.cli.status import OK, Retained, Verdict, render

    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal width

    data = Retained(
        agent="online",
        devices={
            "ups-x": {
                "driver": "snmp",
                "comm": "ok",
                "status": ["OL"],
                "metrics": {"driver.profile": "eaton-mge", "battery.charge": 100},
            }
        },
    )
    render("s", Verdict(OK, []), data)
    assert "profile eaton-mge (auto)" in capsys.readouterr().out
