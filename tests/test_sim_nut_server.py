"""The simulator's upsd face, spoken to over a real socket on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import pytest

from facility_agent.simulators.faces.nut import NutServer, quote, split_line
from facility_agent.simulators.scenario import ScenarioError
from facility_agent.simulators.serve import (
    RunningSimulator,
    SimulatorInfo,
    SimulatorOptions,
    run_simulator,
)
from facility_agent.simulators.site import SimulatedSite
from tests.fixtures.simulator import MakeSimulator


class Conn:
    """A minimal NUT client: one request, the whole reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def line(self) -> str:
        raw = await asyncio.wait_for(self.reader.readline(), 5)
        return raw.decode().rstrip("\n")

    async def ask(self, request: str) -> str:
        self.writer.write(request.encode() + b"\n")
        await self.writer.drain()
        return await self.line()

    async def ask_list(self, request: str) -> list[str]:
        """The lines between BEGIN and END (or [ERR ...])."""
        first = await self.ask(request)
        if first.startswith("ERR"):
            return [first]
        assert first == f"BEGIN {request}"
        body = []
        while (line := await self.line()) != f"END {request}":
            body.append(line)
        return body

    async def login(self, user: str, password: str) -> None:
        assert await self.ask(f"USERNAME {user}") == "OK"
        assert await self.ask(f"PASSWORD {password}") == "OK"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionResetError):  # the server hung up on us first
            await self.writer.wait_closed()


@pytest.fixture
async def conn(nut_simulator: RunningSimulator) -> AsyncIterator[Conn]:
    c = await Conn.open(nut_simulator.nut_port)
    yield c
    await c.close()


# ---- wire format -----------------------------------------------------------------------------


def test_split_and_quote_like_upsd() -> None:
    assert split_line('SET VAR ups-a ups.id "a \\"b\\" \\\\ c"') == [
        "SET",
        "VAR",
        "ups-a",
        "ups.id",
        'a "b" \\ c',
    ]
    assert split_line('  GET   VAR ""  x ') == ["GET", "VAR", "", "x"]
    assert quote('a "b" \\ c') == '"a \\"b\\" \\\\ c"'


# ---- read-only requests ----------------------------------------------------------------------


async def test_version_help_and_tls(conn: Conn) -> None:
    assert (await conn.ask("VER")).startswith("Network UPS Tools upsd 2.8")
    assert await conn.ask("NETVER") == "1.3"
    assert (await conn.ask("HELP")).startswith("Commands: HELP VER GET LIST")
    assert await conn.ask("STARTTLS") == "ERR FEATURE-NOT-CONFIGURED"
    assert await conn.ask("get var ups-a ups.mfr") == 'VAR ups-a ups.mfr "FacilitySim"'


async def test_lists(conn: Conn, nut_simulator: RunningSimulator) -> None:
    assert await conn.ask_list("LIST UPS") == ['UPS ups-a "A-side UPS"', 'UPS ups-b "B-side UPS"']
    body = await conn.ask_list("LIST VAR ups-a")
    values = nut_simulator.site.nut_vars("ups-a")
    assert len(body) == len(values)
    assert 'VAR ups-a ups.status "OL"' in body
    assert 'VAR ups-a device.model "SimUPS 3000"' in body
    rw = await conn.ask_list("LIST RW ups-a")
    assert 'RW ups-a battery.charge.low "20"' in rw
    assert 'RW ups-a ups.delay.shutdown "20"' in rw
    cmds = await conn.ask_list("LIST CMD ups-a")
    for cmd in ("test.battery.start", "load.off", "load.on", "shutdown.return", "beeper.mute"):
        assert f"CMD ups-a {cmd}" in cmds
    assert await conn.ask_list("LIST ENUM ups-a ups.id") == []
    assert await conn.ask_list("LIST RANGE ups-a battery.charge.low") == []
    assert await conn.ask_list("LIST CLIENT ups-a") == []
    assert await conn.ask_list("LIST VAR nope") == ["ERR UNKNOWN-UPS"]
    assert await conn.ask_list("LIST ENUM ups-a no.var") == ["ERR VAR-NOT-SUPPORTED"]


async def test_get_requests(conn: Conn) -> None:
    assert await conn.ask("GET VAR ups-a battery.charge") == 'VAR ups-a battery.charge "100"'
    assert await conn.ask("GET VAR ups-a no.such") == "ERR VAR-NOT-SUPPORTED"
    assert await conn.ask("GET VAR nope ups.status") == "ERR UNKNOWN-UPS"
    assert await conn.ask("GET TYPE ups-a battery.charge.low") == (
        "TYPE ups-a battery.charge.low RW NUMBER"
    )
    assert await conn.ask("GET TYPE ups-a ups.id") == "TYPE ups-a ups.id RW STRING:32"
    assert await conn.ask("GET TYPE ups-a battery.charge") == "TYPE ups-a battery.charge NUMBER"
    assert await conn.ask("GET DESC ups-a ups.status") == 'DESC ups-a ups.status "UPS status"'
    assert await conn.ask("GET CMDDESC ups-a load.on") == (
        'CMDDESC ups-a load.on "Turn on the load immediately"'
    )
    assert await conn.ask("GET UPSDESC ups-b") == 'UPSDESC ups-b "B-side UPS"'
    assert await conn.ask("GET NUMLOGINS ups-a") == "NUMLOGINS ups-a 0"
    assert await conn.ask("GET VAR ups-a server.version") == 'VAR ups-a server.version "2.8.0"'
    assert await conn.ask("GET") == "ERR INVALID-ARGUMENT"
    assert await conn.ask("GET VAR ups-a") == "ERR INVALID-ARGUMENT"
    assert await conn.ask("GET COLOUR ups-a x") == "ERR INVALID-ARGUMENT"
    assert await conn.ask("LIST") == "ERR INVALID-ARGUMENT"
    assert await conn.ask("FROBNICATE") == "ERR UNKNOWN-COMMAND"
    assert await conn.ask('GET VAR "ups-a') == "ERR UNKNOWN-COMMAND"


async def test_values_are_quoted_and_escaped(conn: Conn, nut_simulator: RunningSimulator) -> None:
    await conn.login("admin", "adminpass")
    assert await conn.ask('SET VAR ups-a ups.id "rack \\"7\\" \\\\ left"') == "OK"
    assert nut_simulator.site.ups["ups-a"].ups_id == 'rack "7" \\ left'
    assert await conn.ask("GET VAR ups-a ups.id") == 'VAR ups-a ups.id "rack \\"7\\" \\\\ left"'


# ---- the model behind it ---------------------------------------------------------------------


async def test_utility_failure_shows_on_battery(
    conn: Conn, nut_simulator: RunningSimulator
) -> None:
    nut_simulator.inject("generator.crank_fail")
    nut_simulator.inject("utility.fail")
    assert await conn.ask("GET VAR ups-a ups.status") == 'VAR ups-a ups.status "OB DISCHRG"'
    assert await conn.ask("GET VAR ups-b input.voltage") == 'VAR ups-b input.voltage "0.0"'
    nut_simulator.inject("ups.battery_charge", "ups-a", 90)
    nut_simulator.inject("utility.restore")
    assert await conn.ask("GET VAR ups-a ups.status") == 'VAR ups-a ups.status "OL CHRG"'


async def test_stale_and_disconnected_drivers(conn: Conn, nut_simulator: RunningSimulator) -> None:
    nut_simulator.inject("ups.comm_dead", "ups-b")
    assert await conn.ask("GET VAR ups-b ups.status") == "ERR DATA-STALE"
    assert await conn.ask_list("LIST VAR ups-b") == ["ERR DATA-STALE"]
    assert await conn.ask("GET VAR ups-a ups.status") == 'VAR ups-a ups.status "OL"'
    assert len(await conn.ask_list("LIST UPS")) == 2  # still listed, as upsd does
    nut_simulator.inject("ups.comm_restore", "ups-b")
    assert await conn.ask("GET VAR ups-b ups.status") == 'VAR ups-b ups.status "OL"'
    nut_simulator.inject("ups.driver_down", "ups-a")
    assert await conn.ask("GET VAR ups-a ups.status") == "ERR DRIVER-NOT-CONNECTED"


# ---- authentication and permissions ----------------------------------------------------------


async def test_privileged_commands_need_username_then_password(conn: Conn) -> None:
    assert await conn.ask("INSTCMD ups-a beeper.mute") == "ERR USERNAME-REQUIRED"
    assert await conn.ask("SET VAR ups-a ups.id x") == "ERR USERNAME-REQUIRED"
    assert await conn.ask("FSD ups-a") == "ERR USERNAME-REQUIRED"
    assert await conn.ask("USERNAME admin") == "OK"
    assert await conn.ask("USERNAME other") == "ERR ALREADY-SET-USERNAME"
    assert await conn.ask("INSTCMD ups-a beeper.mute") == "ERR PASSWORD-REQUIRED"
    assert await conn.ask("PASSWORD wrong") == "OK"  # checked when used, like upsd
    assert await conn.ask("PASSWORD again") == "ERR ALREADY-SET-PASSWORD"
    assert await conn.ask("INSTCMD ups-a beeper.mute") == "ERR ACCESS-DENIED"
    assert await conn.ask("SET VAR ups-a ups.id x") == "ERR ACCESS-DENIED"


async def test_empty_password_is_invalid(conn: Conn) -> None:
    assert await conn.ask("USERNAME admin") == "OK"
    assert await conn.ask('PASSWORD ""') == "ERR INVALID-PASSWORD"
    assert await conn.ask("PASSWORD") == "ERR INVALID-ARGUMENT"


async def test_instcmd_changes_the_model(conn: Conn, nut_simulator: RunningSimulator) -> None:
    await conn.login("admin", "adminpass")
    assert await conn.ask("INSTCMD ups-a beeper.mute") == "OK"
    assert nut_simulator.site.ups["ups-a"].beeper == "muted"
    assert await conn.ask("INSTCMD ups-a load.off") == "OK"
    assert await conn.ask("GET VAR ups-a ups.status") == 'VAR ups-a ups.status "OL OFF"'
    assert await conn.ask("INSTCMD ups-a no.such.cmd") == "ERR CMD-NOT-SUPPORTED"
    assert await conn.ask("INSTCMD nope load.on") == "ERR UNKNOWN-UPS"
    assert await conn.ask("INSTCMD ups-a") == "ERR INVALID-ARGUMENT"


async def test_instcmd_permissions_per_user(nut_simulator: RunningSimulator) -> None:
    observer = await Conn.open(nut_simulator.nut_port)
    await observer.login("observer", "observerpass")
    assert await observer.ask("INSTCMD ups-a load.off") == "ERR ACCESS-DENIED"
    assert await observer.ask("SET VAR ups-a ups.id x") == "ERR ACCESS-DENIED"
    assert await observer.ask("FSD ups-a") == "ERR ACCESS-DENIED"
    await observer.close()
    assert "OFF" not in nut_simulator.site.nut_vars("ups-a")["ups.status"]


async def test_set_var_errors(conn: Conn, nut_simulator: RunningSimulator) -> None:
    await conn.login("admin", "adminpass")
    assert await conn.ask("SET VAR ups-a battery.charge.low 35") == "OK"
    assert nut_simulator.site.ups["ups-a"].charge_low == 35
    assert await conn.ask("SET VAR ups-a ups.status OB") == "ERR READONLY"
    assert await conn.ask("SET VAR ups-a no.such 1") == "ERR VAR-NOT-SUPPORTED"
    assert await conn.ask("SET VAR ups-a battery.charge.low 500") == "ERR INVALID-VALUE"
    assert await conn.ask(f"SET VAR ups-a ups.id {'x' * 40}") == "ERR TOO-LONG"
    assert await conn.ask("SET VAR nope ups.id x") == "ERR UNKNOWN-UPS"
    assert await conn.ask("SET VAR ups-a ups.id") == "ERR INVALID-ARGUMENT"


async def test_login_primary_and_fsd(nut_simulator: RunningSimulator) -> None:
    mon = await Conn.open(nut_simulator.nut_port)
    await mon.login("monuser", "monpass")
    assert await mon.ask("LOGIN ups-a") == "OK"
    assert await mon.ask("LOGIN ups-a") == "ERR ALREADY-LOGGED-IN"
    assert await mon.ask("PRIMARY ups-a") == "OK PRIMARY-GRANTED"
    assert await mon.ask("MASTER ups-a") == "OK MASTER-GRANTED"
    other = await Conn.open(nut_simulator.nut_port)
    assert await other.ask("GET NUMLOGINS ups-a") == "NUMLOGINS ups-a 1"
    assert (await other.ask_list("LIST CLIENT ups-a")) == ["CLIENT ups-a 127.0.0.1"]
    assert await mon.ask("FSD ups-a") == "OK FSD-SET"
    assert await other.ask("GET VAR ups-a ups.status") == 'VAR ups-a ups.status "FSD OL"'
    admin = await Conn.open(nut_simulator.nut_port)
    await admin.login("admin", "adminpass")
    assert await admin.ask("LOGIN ups-b") == "ERR ACCESS-DENIED"  # no upsmon role
    assert await admin.ask("FSD ups-b") == "OK FSD-SET"  # the FSD action
    assert await mon.ask("LOGOUT") == "OK Goodbye"
    assert await mon.reader.read() == b""  # upsd hangs up after LOGOUT
    await asyncio.sleep(0.05)
    assert await other.ask("GET NUMLOGINS ups-a") == "NUMLOGINS ups-a 0"
    for c in (mon, other, admin):
        await c.close()


async def test_tracking(conn: Conn, nut_simulator: RunningSimulator) -> None:
    await conn.login("admin", "adminpass")
    assert await conn.ask("GET TRACKING") == "OFF"
    assert await conn.ask("SET TRACKING ON") == "OK"
    reply = await conn.ask("INSTCMD ups-a beeper.disable")
    assert reply.startswith("OK TRACKING ")
    assert await conn.ask(f"GET TRACKING {reply.split()[2]}") == "SUCCESS"
    assert nut_simulator.site.ups["ups-a"].beeper == "disabled"
    assert await conn.ask("SET TRACKING MAYBE") == "ERR INVALID-ARGUMENT"


# ---- robustness and speed --------------------------------------------------------------------


async def test_garbage_and_long_lines_do_not_hurt_other_clients(
    nut_simulator: RunningSimulator,
) -> None:
    good = await Conn.open(nut_simulator.nut_port)
    bad = await Conn.open(nut_simulator.nut_port)
    bad.writer.write(b"\x00\xff\xfe garbage \x1b[2J\n")
    assert await bad.line() == "ERR UNKNOWN-COMMAND"
    assert await good.ask("GET VAR ups-a ups.status") == 'VAR ups-a ups.status "OL"'
    bad.writer.write(b"GET VAR " + b"x" * 100_000)  # no newline, ever
    await bad.writer.drain()
    assert await bad.line() == "ERR INVALID-ARGUMENT"
    # And it is hung up on: a FIN, or a RST when the rest of the 100 kB was still unread in
    # the server's socket as it closed (the kernel resets then; which one wins is timing).
    try:
        async with asyncio.timeout(5):
            assert await bad.reader.read() == b""
    except ConnectionResetError:
        pass
    assert await good.ask("GET VAR ups-a ups.status") == 'VAR ups-a ups.status "OL"'
    await bad.close()
    await good.close()


async def test_pipelined_requests_answer_in_order(nut_simulator: RunningSimulator) -> None:
    c = await Conn.open(nut_simulator.nut_port)
    c.writer.write(b"VER\r\nGET VAR ups-a ups.load\n\nNETVER\n")
    assert (await c.line()).startswith("Network UPS Tools")
    assert (await c.line()).startswith("VAR ups-a ups.load ")
    assert await c.line() == "1.3"
    await c.close()


async def test_idle_clients_are_dropped() -> None:
    server = NutServer(SimulatedSite.default(), port=0, idle_timeout=0.2)
    await server.start()
    try:
        c = await Conn.open(server.port)
        assert await asyncio.wait_for(c.reader.read(), 5) == b""
        assert server.stats.idle_disconnects == 1
        await c.close()
    finally:
        await server.stop()


def _list_var_rate(port: int, n: int) -> float:
    """LIST VAR requests per second from a plain blocking client (no QUICKACK tricks)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        f = s.makefile("rb")
        t0 = time.perf_counter()
        for _ in range(n):
            s.sendall(b"LIST VAR ups-a\n")
            while not f.readline().startswith(b"END LIST"):
                pass
        return n / (time.perf_counter() - t0)


async def test_list_replies_do_not_stall(nut_simulator: RunningSimulator) -> None:
    # upsd's one line per write() stalls on Nagle + delayed ACK: ~22 LIST/s (PEERS.md, PHYSICS).
    # Ours writes a reply at once, with TCP_NODELAY: thousands per second.
    rate = await asyncio.to_thread(_list_var_rate, nut_simulator.nut_port, 40)
    assert rate > 100, f"{rate:.0f} LIST VAR per second"


async def test_stop_closes_clients() -> None:
    server = NutServer(SimulatedSite.default(), port=0)
    await server.start()
    c = await Conn.open(server.port)
    assert await c.ask("NETVER") == "1.3"
    await server.stop()
    assert await asyncio.wait_for(c.reader.read(), 5) == b""
    await c.close()


# ---- the simulator around it -----------------------------------------------------------------


async def test_scenario_plays_on_a_fast_clock(make_simulator: MakeSimulator) -> None:
    sim = await make_simulator(scenario="generator-backup", speed=50)
    c = await Conn.open(sim.nut_port)
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    # 100 simulated seconds at x50: about 2 s of real time.
    while not sim.finished.is_set() and loop.time() < deadline:
        reply = await c.ask("GET VAR ups-a ups.status")
        status = reply.split('"')[1]
        if not seen or seen[-1] != status:
            seen.append(status)
        await asyncio.sleep(0.02)
    await c.close()
    assert sim.finished.is_set()
    assert seen[0] == "OL"
    assert "OB DISCHRG" in seen
    assert seen.index("OB DISCHRG") < seen.index("OL CHRG")  # the generator took the load
    assert sim.site.generator is not None and sim.site.generator.state == "stopped"
    assert sim.scenario_runner is not None
    assert [a.step.do for a in sim.scenario_runner.applied] == [
        "utility.fail",
        "utility.restore",
    ]


async def test_run_simulator_reports_ports_and_stops() -> None:
    infos: list[SimulatorInfo] = []
    stop = asyncio.Event()

    def ready(info: SimulatorInfo) -> None:
        infos.append(info)
        stop.set()

    await asyncio.wait_for(run_simulator(SimulatorOptions(), ready=ready, stop=stop), 5)
    assert infos[0].nut_port and infos[0].ups == ["ups-a", "ups-b"]
    # Until the scenario's end: comm-loss lasts 60 s, at x200 0.3 s.
    options = SimulatorOptions(scenario="comm-loss", speed=200, stop_at_scenario_end=True)
    await asyncio.wait_for(run_simulator(options), 5)


async def test_inject_rejects_bad_actions(nut_simulator: RunningSimulator) -> None:
    with pytest.raises(ScenarioError, match="no ups named 'ups-z'"):
        nut_simulator.inject("ups.comm_dead", "ups-z")
    with pytest.raises(ScenarioError, match="unknown action"):
        nut_simulator.inject("site.explode")
