"""The real NUT clients (Debian's nut-client: upsc, upsrw, upscmd) against the simulator.

The simulator runs on this test's event loop, so the clients run as asyncio subprocesses: a
blocking subprocess.run would stop the loop and the server with it. A missing binary fails the
test (require_binary), it never skips.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.procs import require_binary


@dataclass
class Result:
    code: int
    out: str
    err: str


async def run(*argv: str) -> Result:
    proc = await asyncio.create_subprocess_exec(
        require_binary(argv[0]),
        *argv[1:],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def where(sim: RunningSimulator, ups: str = "ups-a") -> str:
    return f"{ups}@127.0.0.1:{sim.nut_port}"


def parse_dump(text: str) -> dict[str, str]:
    pairs = (line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return {k: v for k, v in pairs}


async def test_upsc_lists_the_ups(nut_simulator: RunningSimulator) -> None:
    r = await run("upsc", "-l", f"127.0.0.1:{nut_simulator.nut_port}")
    assert r.code == 0, r.err
    assert r.out.split() == ["ups-a", "ups-b"]
    r = await run("upsc", "-L", f"127.0.0.1:{nut_simulator.nut_port}")
    assert "ups-b: B-side UPS" in r.out


async def test_upsc_full_dump_matches_the_model(nut_simulator: RunningSimulator) -> None:
    r = await run("upsc", where(nut_simulator))
    assert r.code == 0, r.err
    dump = parse_dump(r.out)
    expected = nut_simulator.site.nut_vars("ups-a")
    assert set(dump) == set(expected)
    for name in ("ups.status", "device.model", "ups.serial", "battery.charge.low", "ups.mfr"):
        assert dump[name] == expected[name]


async def test_upsc_one_variable_and_errors(nut_simulator: RunningSimulator) -> None:
    r = await run("upsc", where(nut_simulator, "ups-b"), "ups.serial")
    assert (r.code, r.out.strip()) == (0, "SIM-UPS-B-0002")
    r = await run("upsc", where(nut_simulator), "no.such.var")
    assert r.code != 0 and "Variable not supported" in r.err
    r = await run("upsc", where(nut_simulator, "ups-z"))
    assert r.code != 0 and "Unknown UPS" in r.err


async def test_upsc_sees_a_utility_failure(nut_simulator: RunningSimulator) -> None:
    nut_simulator.inject("generator.crank_fail")
    nut_simulator.inject("utility.fail")
    r = await run("upsc", where(nut_simulator), "ups.status")
    assert r.out.split() == ["OB", "DISCHRG"]
    r = await run("upsc", where(nut_simulator, "ups-b"))
    dump = parse_dump(r.out)
    assert dump["ups.status"] == "OB DISCHRG"
    assert dump["input.voltage"] == "0.0"


async def test_upsc_data_stale(nut_simulator: RunningSimulator) -> None:
    nut_simulator.inject("ups.comm_dead", "ups-b")
    r = await run("upsc", where(nut_simulator, "ups-b"), "ups.status")
    assert r.code != 0 and "Data stale" in r.err
    r = await run("upsc", where(nut_simulator), "ups.status")
    assert (r.code, r.out.strip()) == (0, "OL")


async def test_upsrw_lists_and_sets(nut_simulator: RunningSimulator) -> None:
    auth = ("-u", "admin", "-p", "adminpass")
    r = await run("upsrw", *auth, where(nut_simulator))
    assert r.code == 0, r.err
    assert "[battery.charge.low]" in r.out
    assert "Type: NUMBER" in r.out
    assert "[ups.id]" in r.out and "Maximum length: 32" in r.out
    r = await run("upsrw", "-s", "battery.charge.low=40", *auth, where(nut_simulator))
    assert (r.code, r.err.strip()) == (0, "OK")  # upsrw and upscmd report on stderr
    assert nut_simulator.site.ups["ups-a"].charge_low == 40
    r = await run("upsc", where(nut_simulator), "battery.charge.low")
    assert r.out.strip() == "40"
    r = await run("upsrw", "-s", 'ups.id=rack "7"', *auth, where(nut_simulator))
    assert r.code == 0, r.err
    r = await run("upsc", where(nut_simulator), "ups.id")
    assert r.out.strip() == 'rack "7"'


async def test_upsrw_refusals(nut_simulator: RunningSimulator) -> None:
    r = await run(
        "upsrw", "-s", "battery.charge.low=40", "-u", "admin", "-p", "nope", where(nut_simulator)
    )
    assert r.code != 0 and "ACCESS-DENIED" in r.err
    r = await run(
        "upsrw", "-s", "ups.status=OB", "-u", "admin", "-p", "adminpass", where(nut_simulator)
    )
    assert r.code != 0 and "READONLY" in r.err
    assert nut_simulator.site.ups["ups-a"].charge_low == 20


async def test_upscmd_lists_and_runs(nut_simulator: RunningSimulator) -> None:
    r = await run("upscmd", "-l", where(nut_simulator))
    assert r.code == 0, r.err
    assert "test.battery.start - Start a battery test" in r.out
    assert "shutdown.return" in r.out
    auth = ("-u", "admin", "-p", "adminpass")
    r = await run("upscmd", *auth, where(nut_simulator), "test.battery.start")
    assert (r.code, r.err.strip()) == (0, "OK")
    assert nut_simulator.site.nut_vars("ups-a")["ups.test.result"] == "In progress"
    r = await run("upscmd", "-w", *auth, where(nut_simulator, "ups-b"), "load.off")
    assert r.code == 0 and "SUCCESS" in r.out + r.err, r.err
    r = await run("upsc", where(nut_simulator, "ups-b"), "ups.status")
    assert r.out.split() == ["OL", "OFF"]


async def test_upscmd_refusals(nut_simulator: RunningSimulator) -> None:
    r = await run(
        "upscmd", "-u", "observer", "-p", "observerpass", where(nut_simulator), "load.off"
    )
    assert r.code != 0 and "ACCESS-DENIED" in r.err
    r = await run("upscmd", "-u", "admin", "-p", "adminpass", where(nut_simulator), "no.such")
    assert r.code != 0 and "CMD-NOT-SUPPORTED" in r.err
    assert "OFF" not in nut_simulator.site.nut_vars("ups-a")["ups.status"]
