"""The Modbus face of the simulated site: the genset controller and the transfer switch.

Registers are laid out by the same profile files the driver reads (config/profiles/
dse-gencomm.yaml for the genset, ats-generic.yaml for the switch): this module reads the YAML as
plain data and encodes the model's values into it, so the two sides cannot drift apart.

It serves Modbus TCP and Modbus RTU on a pseudo-terminal it creates itself (no hardware, no
socat): clients open the pty's slave path (or a symlink to it), exactly as they would a USB
RS-485 adapter. Several units share that one line, as on a real bus.

Faults for tests are set per unit (`set_fault`): a dead unit, a bad CRC, a reply from another
unit, truncated or oversized frames, garbage, "server busy" exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import tty
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

from facility_agent.simulators.site import SimulatedSite

log = logging.getLogger(__name__)

Fault = Literal["none", "dead", "crc", "wrong_unit", "truncated", "oversized", "garbage", "busy"]
FAULTS: tuple[str, ...] = (
    "none",
    "dead",
    "crc",
    "wrong_unit",
    "truncated",
    "oversized",
    "garbage",
    "busy",
)

WORDS = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2, "bool": 1}
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, BUSY = 1, 2, 3, 6
#: DSE GenComm system control keys (DSE 056-051), written to 4104 with their complement at 4105.
KEY_STOP_MODE, KEY_AUTO, KEY_MANUAL, KEY_MANUAL_START = 35700, 35701, 35702, 35705
KEY_RESET_ALARMS, KEY_TELEMETRY_START, KEY_TELEMETRY_STOP = 35707, 35732, 35733


def load_profile_data(name: str) -> dict[str, Any]:
    """A bundled profile as plain data (the simulator never imports the driver)."""
    res = resources.files("facility_agent.data.profiles").joinpath(f"{name}.yaml")
    data = yaml.safe_load(res.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"profile {name}: not a mapping")
    return data


def crc16(data: bytes) -> bytes:
    """Modbus RTU CRC (poly 0xA001, init 0xFFFF), low byte first on the wire."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


# --------------------------------------------------------------------------------------------
# Encoding model values into a profile's registers
# --------------------------------------------------------------------------------------------


def _encode_number(point: Mapping[str, Any], value: Any, defaults: Mapping[str, Any]) -> list[int]:
    ptype = point.get("type", "u16")
    if ptype == "f32":
        data = struct.pack(">f", float(value) / float(point.get("scale", 1.0)))
    else:
        raw = round(float(value) / float(point.get("scale", 1.0)))
        n = WORDS[ptype] * 2
        lo, hi = (
            (-(1 << (8 * n - 1)), (1 << (8 * n - 1)) - 1) if ptype[0] == "s" else (0, 256**n - 1)
        )
        data = max(lo, min(hi, raw)).to_bytes(n, "big", signed=ptype[0] == "s")
    if point.get("byte_order", defaults.get("byte_order", "big")) == "little":
        data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if point.get("word_order", defaults.get("word_order", "big")) == "little":
        words.reverse()
    return words


def encode(profile: Mapping[str, Any], values: Mapping[str, Any]) -> dict[tuple[str, int], int]:
    """(table, address) -> register value (or 0/1 for bits), for every point with a value.

    `values` holds published values by point name; for an `alarm4` point, a mapping of alarm
    name -> level name. Points without a value are left at 0 (GenComm would say "unimplemented",
    which the driver leaves out)."""
    defaults = profile.get("defaults", {})
    image: dict[tuple[str, int], int] = {}
    for point in profile["points"]:
        name, addr = point["name"], int(point["address"])
        table = point.get("table", defaults.get("table", "holding"))
        if name not in values:
            continue
        value = values[name]
        if point.get("type") == "alarm4":
            levels = {v: int(k) for k, v in point.get("levels", {}).items()}
            for i, alarm in enumerate(point["alarms"]):
                code = levels.get(value.get(alarm, ""), 1)
                key = (table, addr + i // 4)
                image[key] = image.get(key, 0) | code << (12 - 4 * (i % 4))
            continue
        if "map" in point:
            raw = next(
                (int(k) for k, v in point["map"].items() if v == value and type(v) is type(value)),
                None,
            )
            if raw is None:
                continue
            words = [raw]
        elif table in ("coil", "discrete") or point.get("type") == "bool":
            words = [int(bool(value))]
        else:
            words = _encode_number(point, value, defaults)
        if "bits" in point:
            lo, hi = point["bits"]
            mask = ((1 << (hi - lo + 1)) - 1) << lo
            key = (table, addr)
            image[key] = (image.get(key, 0) & ~mask) | (words[0] << lo & mask)
            continue
        for i, w in enumerate(words):
            image[(table, addr + i)] = w
    return image


def served_pages(profile: Mapping[str, Any]) -> set[tuple[str, int]]:
    """(table, 256-register page) holding at least one point: reads there are legal (unused
    registers read 0, as GenComm's reserved ones do); reads anywhere else are illegal."""
    defaults = profile.get("defaults", {})
    pages: set[tuple[str, int]] = set()
    for p in profile["points"]:
        table = p.get("table", defaults.get("table", "holding"))
        pages.add((table, int(p["address"]) // 256))
    for c in profile.get("commands", {}).values():
        pages.add((c.get("table", "holding"), int(c["address"]) // 256))
    return pages


# --------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------


class ModbusError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Unit:
    """One Modbus slave: a profile and where its values come from."""

    profile_name = ""

    def __init__(self, site: SimulatedSite) -> None:
        self.site = site
        self.profile = load_profile_data(self.profile_name)
        self.pages = served_pages(self.profile)
        self.fault: Fault = "none"
        self.requests = 0

    def values(self) -> dict[str, Any]:
        raise NotImplementedError

    def image(self) -> dict[tuple[str, int], int]:
        return encode(self.profile, self.values())

    def read(self, table: str, address: int, count: int) -> list[int]:
        if any((table, a // 256) not in self.pages for a in (address, address + count - 1)):
            raise ModbusError(ILLEGAL_ADDRESS)
        image = self.image()
        return [image.get((table, a), 0) for a in range(address, address + count)]

    def write(self, table: str, address: int, values: list[int]) -> None:
        raise ModbusError(ILLEGAL_ADDRESS)


class GensetUnit(Unit):
    """The site's generator behind a DSE GenComm controller."""

    profile_name = "dse-gencomm"

    def __init__(self, site: SimulatedSite) -> None:
        super().__init__(site)
        self.mode: Literal["auto", "stop", "manual"] = "auto"

    def values(self) -> dict[str, Any]:
        gen = self.site.get_generator()
        util = self.site.utility
        c = gen.cfg
        spinning = gen.spinning
        state = "stopped" if gen.state == "fault" else gen.state
        alarms: dict[str, str] = {}
        if gen.state == "fault":
            reason = gen.fault_reason
            name = "low_fuel_level" if "fuel" in reason else "fail_to_start"
            alarms[name] = "shutdown"
        elif gen.fuel_percent < 20:
            alarms["low_fuel_level"] = "warning"
        return {
            "generator.mode": self.mode,
            "engine.oil.pressure": 350 if spinning else 0,
            "engine.coolant.temperature": 82 if gen.state in ("running", "cooling") else 45,
            "engine.oil.temperature": 90 if spinning else 25,
            "generator.fuel.level": round(gen.fuel_percent),
            "engine.charger.voltage": 27.6 if spinning else 0.0,
            "engine.battery.voltage": 27.2 if spinning else 24.6,
            "engine.speed": gen.rpm,
            "generator.frequency": gen.frequency,
            "generator.voltage": gen.voltage,
            "generator.L2-N.voltage": gen.voltage,
            "generator.L3-N.voltage": gen.voltage,
            "generator.current": gen.load_w / gen.voltage if gen.voltage else 0.0,
            "mains.frequency": util.frequency,
            "mains.voltage": util.voltage,
            "generator.state": state,
            "generator.realpower": round(gen.load_w),
            "generator.load": 100.0 * gen.load_w / (c.rated_kw * 1000.0),
            "engine.run_time": round(gen.run_hours * 3600),
            "engine.starts": gen.starts,
            "generator.alarms": alarms,
            "mains.available": util.up,
        }

    def write(self, table: str, address: int, values: list[int]) -> None:
        if table != "holding" or address != 4104 or len(values) != 2:
            raise ModbusError(ILLEGAL_ADDRESS)
        key, check = values
        if key + check != 0xFFFF:
            raise ModbusError(ILLEGAL_VALUE)
        gen = self.site.get_generator()
        if key == KEY_STOP_MODE:
            self.mode, gen.manual = "stop", False
        elif key == KEY_AUTO:
            self.mode, gen.manual = "auto", None
        elif key == KEY_MANUAL:
            self.mode, gen.manual = "manual", False
        elif (key, self.mode) in ((KEY_MANUAL_START, "manual"), (KEY_TELEMETRY_START, "auto")):
            gen.manual = True
        elif key == KEY_TELEMETRY_STOP and self.mode == "auto":
            gen.manual = None
        elif key == KEY_RESET_ALARMS:
            gen.reset()
        elif key not in (KEY_MANUAL_START, KEY_TELEMETRY_START, KEY_TELEMETRY_STOP):
            raise ModbusError(ILLEGAL_VALUE)


class AtsUnit(Unit):
    """The site's transfer switch, in the generic ATS layout."""

    profile_name = "ats-generic"

    def values(self) -> dict[str, Any]:
        site = self.site
        if site.ats is None:
            raise ModbusError(ILLEGAL_ADDRESS)
        ats, gen, util = site.ats, site.get_generator(), site.utility
        live, volts, hz = site.source(ats.name)
        load = site._load_on(ats.name) if live else 0.0
        return {
            "mains.available": util.up,
            "generator.available": gen.available,
            "input.source": ats.source if ats.live else "none",
            "input.utility.voltage": util.voltage,
            "input.generator.voltage": gen.voltage,
            "output.frequency": hz,
            "output.current": load / volts if volts else 0.0,
            "output.realpower": round(load),
            "ats.transfers": ats.transfers,
            "ats.mode": "auto",
        }


# --------------------------------------------------------------------------------------------
# Protocol: PDUs, RTU and TCP framing
# --------------------------------------------------------------------------------------------

TABLE_OF_FC = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


def _exception(fc: int, code: int) -> bytes:
    return bytes([fc | 0x80, code])


def handle_pdu(unit: Unit, pdu: bytes) -> bytes:
    """A request PDU (function code + data) -> the reply PDU."""
    if not pdu:
        return _exception(0, ILLEGAL_FUNCTION)
    fc = pdu[0]
    unit.requests += 1
    try:
        if unit.fault == "busy":
            raise ModbusError(BUSY)
        if fc in TABLE_OF_FC and len(pdu) == 5:
            address, count = struct.unpack(">HH", pdu[1:5])
            bits = fc in (1, 2)
            if not 1 <= count <= (2000 if bits else 125):
                raise ModbusError(ILLEGAL_VALUE)
            values = unit.read(TABLE_OF_FC[fc], address, count)
            if bits:
                packed = bytearray((count + 7) // 8)
                for i, v in enumerate(values):
                    if v:
                        packed[i // 8] |= 1 << (i % 8)
                return bytes([fc, len(packed)]) + bytes(packed)
            return bytes([fc, 2 * count]) + b"".join(struct.pack(">H", v & 0xFFFF) for v in values)
        if fc == 6 and len(pdu) == 5:
            address, value = struct.unpack(">HH", pdu[1:5])
            unit.write("holding", address, [value])
            return pdu
        if fc == 16 and len(pdu) >= 6:
            address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
            if not 1 <= count <= 123 or nbytes != 2 * count or len(pdu) != 6 + nbytes:
                raise ModbusError(ILLEGAL_VALUE)
            regs = list(struct.unpack(f">{count}H", pdu[6:]))
            unit.write("holding", address, regs)
            return pdu[:5]
        if fc == 5 and len(pdu) == 5:
            address, value = struct.unpack(">HH", pdu[1:5])
            if value not in (0, 0xFF00):
                raise ModbusError(ILLEGAL_VALUE)
            unit.write("coil", address, [int(value == 0xFF00)])
            return pdu
        raise ModbusError(ILLEGAL_FUNCTION if fc not in (5, 6, 16, 1, 2, 3, 4) else ILLEGAL_VALUE)
    except ModbusError as exc:
        return _exception(fc, exc.code)


def rtu_request_length(buf: bytes) -> int | None:
    """Length of the RTU request frame at the start of `buf`, or None while it is incomplete."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else None
    return 4  # unknown function: id + fc + crc; answered "illegal function" if the CRC fits


def faulty_rtu_reply(unit_id: int, reply: bytes, fault: str) -> bytes:
    """The frame a unit sends for `reply` (a PDU), with its fault applied."""
    frame = bytes([unit_id]) + reply
    frame += crc16(frame)
    if fault == "crc":
        return frame[:-1] + bytes([frame[-1] ^ 0xFF])
    if fault == "wrong_unit":
        other = bytes([(unit_id % 247) + 1]) + reply
        return other + crc16(other)
    if fault == "truncated":
        return frame[: max(3, len(frame) // 2)]
    if fault == "oversized":
        return frame + bytes(300)
    if fault == "garbage":
        return bytes(range(0xF0, 0xFF))
    return frame


@dataclass
class ModbusFace:
    """Modbus RTU (on a pty the face creates) and TCP, for the units of one simulated site."""

    site: SimulatedSite
    host: str = "127.0.0.1"
    #: TCP port; 0 = any free port; None = no TCP.
    port: int | None = 0
    #: Serve RTU on a pty; a string also puts a symlink to the pty at that path.
    rtu: bool | str = True
    #: Unit id -> which piece of equipment.
    units: Mapping[int, Literal["genset", "ats"]] = field(
        default_factory=lambda: {10: "genset", 11: "ats"}
    )
    on_request: Callable[[int, bytes], None] | None = None
    #: Emulate a serial line of this speed (8N1) on the pty, which has none of its own: each
    #: reply leaves after the wire time of its request and of itself plus two 3.5-character
    #: gaps. None = as fast as the pty goes.
    baudrate: int | None = None

    def __post_init__(self) -> None:
        self.unit: dict[int, Unit] = {}
        for uid, kind in self.units.items():
            if kind == "genset" and self.site.generator is not None:
                self.unit[uid] = GensetUnit(self.site)
            elif kind == "ats" and self.site.ats is not None:
                self.unit[uid] = AtsUnit(self.site)
        self._server: asyncio.Server | None = None
        self.tcp_port: int | None = None
        self.rtu_path: str | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._link: str | None = None
        self._buf = bytearray()
        self._pending: asyncio.TimerHandle | None = None

    def set_fault(self, unit_id: int, fault: str) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
        self.unit[unit_id].fault = fault  # type: ignore[assignment]

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.port is not None:
            self._server = await asyncio.start_server(self._tcp_client, self.host, self.port)
            self.tcp_port = int(self._server.sockets[0].getsockname()[1])
        if self.rtu:
            self._open_pty()

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        # Raw line discipline (no echo, no CR/LF mangling); keep our slave fd open so reads on
        # the master do not fail with EIO while no client has the port open.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.rtu_path = os.ttyname(slave)
        if isinstance(self.rtu, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.rtu)
            os.symlink(self.rtu_path, self.rtu)
            self._link = self.rtu
        asyncio.get_running_loop().add_reader(master, self._rtu_readable)

    def close_rtu(self) -> None:
        """Take the serial line away (a USB adapter unplugged): the pty and its link vanish."""
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            for fd in (self._master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = None
        if self._link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._link)
            self._link = None
        self._buf.clear()

    def reopen_rtu(self) -> None:
        """Plug the adapter back in (a new pty, the same symlink)."""
        self.close_rtu()
        self._open_pty()

    async def stop(self) -> None:
        self.close_rtu()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # ---- RTU ----------------------------------------------------------------------------

    def _rtu_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            return
        self._buf += data
        self._rtu_frames()
        # A frame that stays incomplete is dropped after a silence, as a real slave does.
        if self._pending:
            self._pending.cancel()
        if self._buf:
            self._pending = asyncio.get_running_loop().call_later(0.05, self._buf.clear)

    def _rtu_frames(self) -> None:
        while True:
            n = rtu_request_length(bytes(self._buf))
            if n is None or len(self._buf) < n:
                return
            frame, self._buf = bytes(self._buf[:n]), self._buf[n:]
            if crc16(frame[:-2]) != frame[-2:]:
                # A corrupt frame: a slave stays silent and waits for the next one.
                self._buf.clear()
                return
            uid, pdu = frame[0], frame[1:-2]
            if self.on_request:
                self.on_request(uid, pdu)
            unit = self.unit.get(uid)
            if unit is None or unit.fault == "dead" or uid == 0:
                continue
            reply = faulty_rtu_reply(uid, handle_pdu(unit, pdu), unit.fault)
            if self.baudrate:
                chars = len(frame) + len(reply) + 7  # two 3.5-character silences
                delay = chars * 10 / self.baudrate
                asyncio.get_running_loop().call_later(delay, self._send_rtu, reply)
            else:
                self._send_rtu(reply)

    def _send_rtu(self, reply: bytes) -> None:
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.write(self._master, reply)

    # ---- TCP ----------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(7)
                tid, pid, length, uid = struct.unpack(">HHHB", head)
                if pid != 0 or not 2 <= length <= 254:
                    break
                pdu = await reader.readexactly(length - 1)
                if self.on_request:
                    self.on_request(uid, pdu)
                unit = self.unit.get(uid)
                if unit is None:
                    # A gateway's answer for a unit that is not there.
                    reply = _exception(pdu[0], 11)
                elif unit.fault == "dead":
                    continue
                else:
                    reply = handle_pdu(unit, pdu)
                fault = unit.fault if unit else "none"
                out_uid = (uid % 247) + 1 if fault == "wrong_unit" else uid
                frame = struct.pack(">HHHB", tid, 0, len(reply) + 1, out_uid) + reply
                if fault == "truncated":
                    frame = frame[: len(frame) // 2]
                elif fault == "garbage":
                    frame = bytes(range(0xF0, 0xFF))
                elif fault == "oversized":
                    frame = struct.pack(">HHHB", tid, 0, 300, out_uid) + reply + bytes(300)
                writer.write(frame)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
