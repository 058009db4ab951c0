"""The Modbus driver and the simulator's Modbus face, against real peers on loopback.

Peers: pymodbus's own server (RTU over a socat pty pair, and TCP), mbpoll (libmodbus) reading
our simulator, and the simulator (RTU on the pty it creates, and TCP). Misbehaviour no real
server does on demand (bad CRC, wrong unit, truncated/oversized frames, busy) comes from the
simulator's per-unit fault switch.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from facility_agent.core.driver import ActionError, DeviceError, DeviceTimeout, ProtocolError
from facility_agent.drivers.modbus.bus import ModbusExceptionError, ModbusMapError, frame_gap
from facility_agent.drivers.modbus.driver import ModbusDeviceConfig, ModbusDriver
from facility_agent.drivers.modbus.profile import (
    Decoded,
    Point,
    Profile,
    bundled_profiles,
    decode_point,
    load_profile,
)
from facility_agent.runtime.poller import DevicePoller, PollFailed, PollOk, PollOutcome
from facility_agent.runtime.state import SiteState
from facility_agent.simulators.faces.modbus import ModbusFace, encode, load_profile_data
from facility_agent.simulators.serve import RunningSimulator

from .fixtures.modbus import PymodbusPeer
from .fixtures.procs import require_binary

pytestmark = pytest.mark.peer

GEN, ATS = 10, 11


def driver(**kw: Any) -> ModbusDriver:
    kw.setdefault("id", "gen-1")
    kw.setdefault("profile", "dse-gencomm")
    kw.setdefault("request_timeout", 0.3)
    return ModbusDriver(ModbusDeviceConfig(driver="modbus", **kw))


def where(sim: RunningSimulator, transport: str) -> dict[str, Any]:
    if transport == "rtu":
        return {"serial": sim.info.extra["modbus_rtu"]}
    return {"host": "127.0.0.1", "port": sim.info.ports["modbus"]}


def face(sim: RunningSimulator) -> ModbusFace:
    assert sim.modbus is not None
    return sim.modbus


# ---- profiles (no I/O) ----------------------------------------------------------------------


def test_bundled_profiles_load_and_read_in_few_blocks() -> None:
    assert {"dse-gencomm", "ats-generic", "smartgen-hgm6100n"} <= set(bundled_profiles())
    dse = load_profile("dse-gencomm")
    blocks = dse.blocks()
    assert len(blocks) <= 8 < len(dse.points)
    covered = {p.name for b in blocks for p in b.points}
    assert covered == {p.name for p in dse.points}
    assert all(b.count <= 125 for b in blocks)


def test_types_orders_bits_and_sentinels() -> None:
    d = Profile(name="t", points=[Point(name="x", address=0, range="0..65535")]).defaults
    s16, u32, s32 = "-32768..32767", "0..4294967295", "-2147483648..2147483647"
    cases: list[tuple[dict[str, Any], list[int], Any]] = [
        ({"type": "s16", "range": s16}, [0xFFFE], -2),
        ({"type": "u32", "range": u32}, [0x0001, 0x0002], 65538),
        ({"type": "u32", "range": u32, "word_order": "little"}, [0x0002, 0x0001], 65538),
        ({"type": "s32", "range": s32, "scale": 0.1}, [0xFFFF, 0xFFF6], -1),
        ({"type": "f32", "range": "-1000..1000"}, [0x4148, 0x0000], 12.5),
        (
            {"type": "f32", "range": "-1000..1000", "byte_order": "little", "word_order": "little"},
            [0x0000, 0x4841],
            12.5,
        ),
        ({"type": "u16", "range": "0..15", "bits": (4, 7), "map": {2: "two"}}, [0x0020], "two"),
        # Sentinels (and the older key `invalid`), the range, and an undocumented map value.
        ({"type": "u16", "range": "0..65535", "sentinels": [0xFFFF]}, [0xFFFF], None),
        ({"type": "u16", "range": "0..65535", "invalid": [65535]}, [0xFFFF], None),
        ({"type": "s16", "range": "-50..200"}, [0xFFC4], None),  # -60 degC: below the range
        ({"type": "s16", "range": "-50..200"}, [0xFFCE], -50),
        ({"type": "f32", "range": "-1000..1000"}, [0x7FC0, 0x0000], None),  # NaN
        ({"type": "u16", "range": "0..15", "map": {0: "stopped", 3: "running"}}, [15], None),
    ]
    for spec, words, expected in cases:
        out = Decoded()
        decode_point(Point(name="x", address=0, **spec), words, d, out)
        assert out.metrics.get("x") == expected, spec
        assert ("x" in out.unknown) == (expected is None), spec
    out = Decoded()
    point = Point(name="f", address=0, range="0..65535", bitflags={0: "A", 3: "B"})
    decode_point(point, [0b1001], d, out)
    assert out.flags == ["A", "B"]


def test_every_numeric_point_needs_a_range() -> None:
    with pytest.raises(ValidationError, match="range: is required"):
        Point(name="x", address=0, type="u16")
    with pytest.raises(ValidationError, match="low end above high end"):
        Point(name="x", address=0, range="10..1")
    with pytest.raises(ValidationError, match="no range"):
        Point(name="b", address=0, table="coil", type="bool", range="0..1")
    Point(name="b", address=0, table="coil", type="bool")  # two-valued: no range needed


def test_simulator_encodes_what_the_driver_decodes() -> None:
    """The same profile drives both sides: encode then decode gives the values back."""
    prof, data = load_profile("dse-gencomm"), load_profile_data("dse-gencomm")
    values = {
        "generator.state": "warming",
        "generator.voltage": 231.4,
        "engine.coolant.temperature": -12,
        "generator.realpower": -5000,
        "mains.available": False,
        "generator.alarms": {"fail_to_start": "shutdown", "low_fuel_level": "warning"},
    }
    image = encode(data, values)
    out = Decoded()
    for p in prof.points:
        words = [image.get(("holding", p.address + i), 0) for i in range(p.words)]
        decode_point(p, words, prof.defaults, out)
    for k in ("generator.state", "generator.voltage", "engine.coolant.temperature"):
        assert out.metrics[k] == values[k]
    assert out.metrics["generator.realpower"] == -5000
    assert out.metrics["mains.available"] is False
    assert out.alarms == {"fail_to_start": "shutdown", "low_fuel_level": "warning"}
    assert {"ALARM_SHUTDOWN", "ALARM_WARNING"} <= set(out.flags)


def test_frame_gap_is_three_and_a_half_characters() -> None:
    assert frame_gap(9600) == pytest.approx(3.5 * 10 / 9600)
    assert frame_gap(9600, parity="E") == pytest.approx(3.5 * 11 / 9600)
    assert frame_gap(115200) == 0.00175


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="either serial"):
        ModbusDeviceConfig(id="g", driver="modbus", profile="dse-gencomm")
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        ModbusDeviceConfig(id="g", driver="modbus", host="h", profile="nope")
    with pytest.raises(ValueError, match="baudrate"):
        ModbusDeviceConfig(
            id="g", driver="modbus", serial="/dev/x", baudrate=9601, profile="ats-generic"
        )


# ---- a plain pymodbus server ------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["rtu", "tcp"])
async def test_driver_against_pymodbus_server(
    pymodbus_peer: PymodbusPeer, transport: str, tmp_path: Path
) -> None:
    link: dict[str, Any] = (
        {"serial": pymodbus_peer.tty}
        if transport == "rtu"
        else {"host": "127.0.0.1", "port": pymodbus_peer.tcp_port}
    )
    d = driver(unit=10, request_timeout=1.0, **link)
    try:
        s = await d.poll()
        m = s.metrics
        assert m["generator.mode"] == "auto"
        assert m["engine.oil.pressure"] == 350
        assert m["engine.coolant.temperature"] == -20
        assert "engine.oil.temperature" not in m  # GenComm sentinel ...
        assert "engine.oil.temperature" in s.unknown  # ... is unknown, not a reading
        assert m["generator.fuel.level"] == 75
        assert m["engine.battery.voltage"] == 24.5
        assert m["generator.frequency"] == 50
        assert m["generator.voltage"] == 230.1
        assert m["generator.state"] == "running"
        assert m["generator.realpower"] == 10000
        assert m["generator.load"] == 45.6
        assert m["engine.run_time"] == 65536
        assert m["generator.alarms"] == "generator_under_frequency:warning"
        assert m["mains.available"] is False
        assert {"AUTO", "RUNNING", "ALARM_WARNING", "MAINS_FAIL"} <= set(s.status)
        assert "START_FAILED" not in s.status
    finally:
        await d.close()
    # A profile that asks for a register the device does not have: permanent, names the unit.
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "bad", "points": [{"name": "x", "address": 3000, "range": "0..65535"}]}
        )
    )
    d = driver(unit=10, request_timeout=1.0, profile=str(path), **link)
    try:
        with pytest.raises(ModbusMapError, match=r"unit 10 on .*illegal data address") as exc:
            await d.poll()
        assert exc.value.permanent
    finally:
        await d.close()


# ---- our simulator ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["rtu", "tcp"])
async def test_driver_against_simulator_through_an_outage(
    make_simulator: Any, tmp_path: Path, transport: str
) -> None:
    sim = await make_simulator(
        nut_port=None, modbus_port=0, modbus_rtu=str(tmp_path / "tty"), speed=20
    )
    gen = driver(
        unit=GEN, fuel_tank_litres=200, fuel_lph_idle=1.5, fuel_lph_full=6, **where(sim, transport)
    )
    ats = driver(id="ats-1", unit=ATS, profile="ats-generic", **where(sim, transport))
    try:
        s = await gen.poll()
        assert s.metrics["generator.state"] == "stopped" and "MAINS_OK" in s.status
        assert s.metrics["mains.voltage"] == 230
        assert s.metrics["generator.fuel.level"] == round(sim.site.get_generator().fuel_percent)
        a = await ats.poll()
        assert a.metrics["input.source"] == "utility" and "ON_UTILITY" in a.status
        sim.inject("utility.fail")
        await sim.wait_for(lambda st: st.ats is not None and st.ats.source == "generator", 10)
        await sim.wait_for(lambda st: st.get_generator().load_w > 0, 10)
        s = await gen.poll()
        assert s.metrics["generator.state"] == "running"
        assert {"RUNNING", "MAINS_FAIL"} <= set(s.status)
        assert s.metrics["mains.available"] is False
        assert s.metrics["engine.speed"] == 1500
        load = s.metrics["generator.load"]
        assert isinstance(load, float | int) and 0 < load < 100
        hours = s.metrics["generator.fuel.hours_left"]
        assert isinstance(hours, float) and hours > 10
        a = await ats.poll()
        assert a.metrics["input.source"] == "generator" and "ON_GEN" in a.status
    finally:
        await gen.close()
        await ats.close()


@pytest.mark.parametrize("transport", ["rtu", "tcp"])
async def test_mbpoll_reads_the_simulator(modbus_sim: RunningSimulator, transport: str) -> None:
    mbpoll = require_binary("mbpoll")
    if transport == "rtu":
        target = ["-m", "rtu", "-b", "9600", "-P", "none", face(modbus_sim).rtu_path or ""]
    else:
        target = ["-m", "tcp", "-p", str(modbus_sim.info.ports["modbus"]), "127.0.0.1"]
    args = ["-a", str(GEN), "-0", "-r", "1024", "-c", "8", "-t", "4", "-1", "-o", "1"]
    argv = [mbpoll, *args, *target[:-1], target[-1]]
    out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    image = face(modbus_sim).unit[GEN].image()
    for addr in range(1024, 1032):
        raw = image.get(("holding", addr), 0)
        assert f"[{addr}]: \t{raw}" in out.stdout, (addr, raw, out.stdout)
    # Discrete inputs of the ATS (FC2) and an illegal address (exception 02).
    argv = [mbpoll, "-a", str(ATS), "-0", "-r", "0", "-c", "2", "-t", "1", "-1", *target]
    out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "[0]: \t1" in out.stdout, out.stdout
    argv = [mbpoll, "-a", str(GEN), "-0", "-r", "30000", "-c", "2", "-t", "4", "-1", *target]
    out = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=20)
    assert "Illegal data address" in out.stdout + out.stderr


# ---- one bus, several units ---------------------------------------------------------------


async def test_a_dead_unit_does_not_slow_the_live_one(modbus_sim: RunningSimulator) -> None:
    """Genset and ATS on one RTU line, the ATS dead: the genset keeps its 0.5 s schedule."""
    face(modbus_sim).set_fault(ATS, "dead")
    serial = where(modbus_sim, "rtu")
    gen = driver(unit=GEN, interval=0.5, timeout=0.5, jitter=0.0, request_timeout=0.2, **serial)
    dead = driver(
        id="ats-1",
        unit=ATS,
        profile="ats-generic",
        interval=0.5,
        timeout=0.5,
        jitter=0.0,
        request_timeout=0.2,
        retries=2,
        **serial,
    )
    outcomes: dict[str, list[tuple[float, PollOutcome]]] = {"gen-1": [], "ats-1": []}
    t0 = time.monotonic()

    def report(o: PollOutcome) -> None:
        outcomes[o.device].append((time.monotonic() - t0, o))

    tasks = [asyncio.create_task(DevicePoller(d, report).run()) for d in (gen, dead)]
    await asyncio.sleep(4.0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await gen.close()
    await dead.close()
    good = outcomes["gen-1"]
    assert all(isinstance(o, PollOk) for _, o in good), [o for _, o in good]
    # 8 polls in 4 s at 0.5 s; allow for a busy machine, but not for a stall per dead timeout.
    assert len(good) >= 6, len(good)
    # Within the poll deadline (0.5 s + the poller's grace): never cut off by a dead timeout.
    assert max(o.duration for _, o in good if isinstance(o, PollOk)) < 0.65
    lost = [o for _, o in outcomes["ats-1"] if isinstance(o, PollFailed)]
    assert lost and lost[-1].lost and isinstance(lost[-1].error, DeviceTimeout)
    assert "unit 11" in lost[-1].error.reason and "no reply" in lost[-1].error.reason


# ---- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        ("crc", ProtocolError, "garbled reply"),
        ("truncated", ProtocolError, "garbled reply"),
        ("garbage", ProtocolError, "garbled reply"),
        ("oversized", ProtocolError, "oversized|garbled"),
        ("wrong_unit", ProtocolError, "from unit 11"),
        ("busy", ModbusExceptionError, "server device busy"),
        ("dead", DeviceTimeout, "no reply within"),
    ],
)
async def test_bad_replies_are_clear_errors_and_the_link_recovers(
    modbus_sim: RunningSimulator, fault: str, error: type[DeviceError], text: str
) -> None:
    for transport in ("rtu", "tcp"):
        if transport == "tcp" and fault in ("crc", "oversized"):
            continue  # no CRC on TCP; an oversized MBAP length just waits (covered as truncated)
        d = driver(unit=GEN, retries=1, **where(modbus_sim, transport))
        try:
            face(modbus_sim).set_fault(GEN, fault)
            started = time.monotonic()
            with pytest.raises(error, match=text) as exc:
                await d.poll()
            assert time.monotonic() - started < 3
            assert "unit 10 on" in exc.value.reason and not exc.value.permanent
            face(modbus_sim).set_fault(GEN, "none")
            s = await d.poll()
            assert s.metrics["generator.state"] == "stopped"
        finally:
            face(modbus_sim).set_fault(GEN, "none")
            await d.close()


async def test_exception_replies_illegal_address_and_value(
    modbus_sim: RunningSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "points": [{"name": "x", "address": 40000, "range": "0..65535"}],
                "commands": {"bad": {"address": 4104, "values": [35701, 1]}},
            }
        )
    )
    d = driver(unit=GEN, profile=str(path), allow_writes=True, **where(modbus_sim, "rtu"))
    try:
        with pytest.raises(ModbusMapError, match="illegal data address"):
            await d.poll()
        with pytest.raises(ActionError, match="illegal data value"):
            await d.run_action("bad")
    finally:
        await d.close()


async def test_a_serial_port_that_disappears_is_reopened(modbus_sim: RunningSimulator) -> None:
    d = driver(unit=GEN, **where(modbus_sim, "rtu"))
    try:
        await d.poll()
        face(modbus_sim).close_rtu()  # the USB adapter is unplugged: the port is gone
        with pytest.raises(DeviceError, match="serial port"):
            await d.poll()
        with pytest.raises(DeviceError, match="cannot open serial port"):
            await d.poll()
        face(modbus_sim).reopen_rtu()  # plugged back in: a new pty behind the same path
        s = await d.poll()
        assert s.metrics["generator.state"] == "stopped"
    finally:
        await d.close()


async def test_a_dead_unit_is_lost_then_retried_with_backoff(modbus_sim: RunningSimulator) -> None:
    face(modbus_sim).set_fault(GEN, "dead")
    d = driver(unit=GEN, interval=0.5, lost_after=2, backoff_max=8, **where(modbus_sim, "tcp"))
    poller = DevicePoller(d, lambda o: None)
    try:
        first = await poller.poll_once()
        second = await poller.poll_once()
        assert isinstance(first, PollFailed) and not first.lost
        assert isinstance(second, PollFailed) and second.lost
        third = await poller.poll_once()
        assert poller.next_delay(third, 0.0) > 0.5 * 1.5  # backing off
    finally:
        await d.close()


# ---- generator semantics, events, commands -------------------------------------------------


async def test_start_failure_and_fault_events(make_simulator: Any, tmp_path: Path) -> None:
    sim = await make_simulator(nut_port=None, modbus_port=0, speed=20)
    d = driver(unit=GEN, start_timeout=0.6, **where(sim, "tcp"))
    state = SiteState("lab")
    state.declare_flag_events("gen-1", d.flag_events())
    seen: list[str] = []
    try:
        sim.inject("generator.crank_fail")
        sim.inject("utility.fail")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not {
            "generator.start_failed",
            "generator.fault",
        } <= set(seen):
            t = state.apply_sample("modbus", await d.poll())
            seen += [e.type for e in t.events]
            await asyncio.sleep(0.1)
    finally:
        await d.close()
    assert "mains.lost" in seen
    assert "generator.start_failed" in seen
    assert "generator.fault" in seen  # every crank attempt failed: the controller shut down
    assert seen.count("generator.start_failed") == 1


async def test_commands_need_allow_writes(modbus_sim: RunningSimulator) -> None:
    ro = driver(unit=GEN, **where(modbus_sim, "rtu"))
    rw = driver(id="gen-rw", unit=GEN, allow_writes=True, **where(modbus_sim, "rtu"))
    try:
        assert {"start", "stop", "auto"} <= set(await ro.actions())
        with pytest.raises(ActionError, match="allow_writes"):
            await ro.run_action("start")
        with pytest.raises(ActionError, match="no command 'launch'"):
            await rw.run_action("launch")
        assert "start written to unit 10" in await rw.run_action("start")
        assert modbus_sim.site.get_generator().manual is True
        await rw.run_action("stop")
        assert modbus_sim.site.get_generator().manual is None
        await rw.run_action("stop_mode")
        assert (await rw.poll()).metrics["generator.mode"] == "stop"
        await rw.run_action("auto")
        assert (await rw.poll()).metrics["generator.mode"] == "auto"
    finally:
        await ro.close()
        await rw.close()
