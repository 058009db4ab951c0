"""`facility-agent snmp record`: a walk of a real card (a recording replayed by real snmpd) is
written to a .snmprec with serial numbers masked; replayed in turn by snmpd, it reads the same
state through `profile: auto` as the card did."""

from __future__ import annotations

import asyncio
from pathlib import Path

from facility_agent.cli import main
from facility_agent.model import Sample

from .test_snmp_recordings import CASES, driver, serve


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
    # The system group as the agent walks it (here snmpd's own; the fixture only overrides GET
    # of sysObjectID), then the card's MIB subtrees.
    assert any(line.startswith("1.3.6.1.2.1.1.2.0|6|") for line in lines)
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
