"""The IPMI face of the simulated site: one BMC per simulated server, each on its own UDP port.

Each BMC is a `pyghmi.ipmi.bmc.Bmc` (RMCP+ session, cipher suite 3) answering from the one
physical model: chassis status and control (soft off runs the model's OS shutdown, so the
server's load leaves its UPS only after `os_shutdown_s`), an SDR repository with temperature,
fan, 12 V, system power and one status sensor per PSU (presence, failure, AC lost: PSU 1 loses
its input when its PDU feed goes), and an SEL that logs PSU failures and AC loss as they happen.
A server with no live PSU has no standby power: its BMC stops answering.

The BMCs run in processes of their own (`BMCS_PER_PROCESS` each), never in the simulator's:
pyghmi keeps one process-wide I/O thread and session table, and a pyghmi client in the same
process (a test, a drill's agent) would share them with the servers. The simulator process
keeps the model; `IpmiFace` sends each child the servers' state (power, load, PSU feeds) as it
changes, one JSON line on the child's stdin, and the child sends power commands back on its
stdout. A child ends when its stdin closes, so it never outlives the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from facility_agent.simulators.site import SimulatedSite
from facility_agent.simulators.tasks import cancel
from facility_wire.pyghmi_sockets import patch_socket_modes

log = logging.getLogger(__name__)

#: Users of every simulated BMC (user name -> password), administrator privilege.
DEFAULT_USERS: dict[str, str] = {"admin": "adminpass", "operator": "operpass"}

# Sensor numbers and the SDR (IPMI 2.0 tables 43-1, 43-2, 43-15 and 42-3).
TEMP_INLET, TEMP_CPU, FAN1, VOLT12, SYS_POWER, PSU1, PSU2, OEM_SENSOR = 1, 2, 3, 4, 5, 6, 7, 0x30
_UNIT_DEGC, _UNIT_VOLTS, _UNIT_WATTS, _UNIT_RPM = 1, 4, 6, 18


def _id_string(name: str) -> bytes:
    raw = name.encode("ascii")[:16]
    return bytes([0xC0 | len(raw)]) + raw


def full_sdr(num: int, name: str, stype: int, unit: int, m: int, r_exp: int, entity: int) -> bytes:
    """A type-01 record of a linear, unsigned threshold sensor: value = m x raw x 10^r_exp."""
    body = bytes([0x20, 0x00, num, entity, 1, 0x7F, 0x68, stype, 0x01])
    body += struct.pack("<HHH", 0, 0, 0)  # no threshold events, none readable
    body += bytes([0x00, unit, 0x00, 0x00])  # unsigned, base unit, no modifier, linear
    body += bytes([m & 0xFF, ((m >> 8) & 0x03) << 6, 0, 0, 0x01, (r_exp & 0x0F) << 4, 0])
    body += bytes([0, 0, 0, 0xFF, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    return body + _id_string(name)


def compact_psu_sdr(num: int, instance: int) -> bytes:
    """A type-02 record of a sensor-specific Power Supply sensor (presence, failure, AC lost)."""
    mask = 0b1011
    body = bytes([0x20, 0x00, num, 0x0A, instance, 0x7F, 0x40, 0x08, 0x6F])
    body += struct.pack("<HHH", mask, mask, mask)
    body += bytes([0xC0, 0, 0, 0x01, 0x00, 0, 0, 0, 0, 0, 0])
    return body + _id_string(f"PSU{instance} Status")


def oem_sdr(num: int) -> bytes:
    """A compact record of an OEM sensor type (0xC0) no generic tool knows."""
    body = bytes([0x20, 0x00, num, 0x07, 1, 0x7F, 0x40, 0xC0, 0x70])
    body += struct.pack("<HHH", 0x3, 0x3, 0x3)
    body += bytes([0xC0, 0, 0, 0x01, 0x00, 0, 0, 0, 0, 0, 0])
    return body + _id_string("OEM Widget")


def _record(record_id: int, rtype: int, body: bytes) -> bytes:
    return struct.pack("<HBBB", record_id, 0x51, rtype, len(body)) + body


@dataclass
class BmcFaults:
    """Misbehaviour a test can switch on for one BMC."""

    #: Seconds to sleep before each reply (a busy BMC).
    delay: float = 0.0
    #: Add a sensor of an OEM type no tool knows.
    oem_sensor: bool = False
    #: Cut every SDR record short (a malformed repository).
    malformed_sdr: bool = False
    #: Sensor numbers whose reading says "reading unavailable" (byte 2 bit 5 set).
    unavailable: list[int] = field(default_factory=list)
    #: Sensor numbers whose reading says "scanning disabled" (byte 2 bit 6 clear).
    not_scanning: list[int] = field(default_factory=list)


@dataclass
class _SelEntry:
    record: bytes


@dataclass
class _BmcState:
    """What one BMC remembers between requests: its SEL and the PSU bits it last saw."""

    sel: list[_SelEntry] = field(default_factory=list)
    last_add: int = 0
    psu_bits: list[int] = field(default_factory=list)
    next_id: int = 1


@dataclass
class ServerView:
    """What a BMC process knows of its server: the model's state as last sent."""

    name: str
    powered: bool = True
    power_w: float = 0.0
    psu_live: list[bool] = field(default_factory=list)
    psu_failed: list[bool] = field(default_factory=list)


def _view_state(server: Any) -> dict[str, Any]:
    """The part of a model server its BMC shows (the simulator sends this to the BMC)."""
    return {
        "powered": bool(server.powered),
        "power_w": round(float(server.power_w), 1),
        "psu_live": [bool(x) for x in server.psu_live],
        "psu_failed": [bool(x) for x in server.psu_failed],
    }


def _psu_bits(server: ServerView, index: int) -> int:
    bits = 0x01  # present
    if server.psu_failed[index]:
        bits |= 0x02
    elif not server.psu_live[index]:
        bits |= 0x08
    return bits


def _make_bmc_class() -> type[Any]:
    """pyghmi's Bmc with our handlers; built on first use so importing needs no pyghmi."""
    _anchor_io_thread()
    from pyghmi.ipmi import bmc as pbmc
    from pyghmi.ipmi.private import serversession

    _patch_cipher(serversession)

    class SiteBmc(pbmc.Bmc):  # type: ignore[misc]
        def __init__(
            self,
            host: str,
            users: dict[str, str],
            server: ServerView,
            port: int,
            send: Callable[[dict[str, Any]], None],
        ) -> None:
            super().__init__(dict(users), port=port, address=host)
            self.port = self.serversocket.getsockname()[1]
            serversession.ipmisession.Session.bmc_handlers[self.serversocket] = {0: self}
            self.send = send
            self.server = server
            self.npsu = min(2, len(server.psu_live))
            self.state = _BmcState(psu_bits=[_psu_bits(server, i) for i in range(self.npsu)])
            self.faults = BmcFaults()
            self.additionaldevices = 0x07  # sensor, SDR repository and SEL device
            self.mfgid, self.prodid, self.deviceid = 0xB1F, 0x0001, 0x20
            self.lock = threading.Lock()

        # ---- availability -------------------------------------------------------------

        @property
        def standby(self) -> bool:
            return any(self.server.psu_live)

        def sessionless_data(self, data: Any, sockaddr: Any) -> None:
            if self.standby:
                super().sessionless_data(data, sockaddr)

        # ---- chassis ------------------------------------------------------------------

        def get_power_state(self) -> str:
            return "on" if self.server.powered else "off"

        def _model(self, op: str) -> int:
            """Power commands act on the model, which lives in the simulator's process."""
            self.send({"power": op, "server": self.server.name})
            return 0

        def power_off(self) -> int:
            return self._model("power_off")

        def power_on(self) -> int:
            return self._model("power_on")

        def power_shutdown(self) -> int:
            return self._model("shutdown")

        def power_cycle(self) -> int:
            return self._model("power_cycle")

        def power_reset(self) -> int:
            return self.power_cycle()

        def get_system_guid(self) -> Any:
            return self.uuid

        # ---- SDR, sensors, SEL --------------------------------------------------------

        def sdr_records(self) -> list[bytes]:
            bodies = [
                (0x01, full_sdr(TEMP_INLET, "Inlet Temp", 0x01, _UNIT_DEGC, 1, 0, 0x37)),
                (0x01, full_sdr(TEMP_CPU, "CPU Temp", 0x01, _UNIT_DEGC, 1, 0, 0x03)),
                (0x01, full_sdr(FAN1, "Fan1", 0x04, _UNIT_RPM, 100, 0, 0x1D)),
                (0x01, full_sdr(VOLT12, "12V Rail", 0x02, _UNIT_VOLTS, 1, -1, 0x07)),
                (0x01, full_sdr(SYS_POWER, "Sys Power", 0x0B, _UNIT_WATTS, 4, 0, 0x07)),
                (0x02, compact_psu_sdr(PSU1, 1)),
                (0x02, compact_psu_sdr(PSU2, 2)),
            ]
            if self.faults.oem_sensor:
                bodies.append((0x02, oem_sdr(OEM_SENSOR)))
            out = [_record(i + 1, t, b) for i, (t, b) in enumerate(bodies)]
            if self.faults.malformed_sdr:
                out = [r[:9] for r in out]
            return out

        def reading(self, num: int) -> bytes | None:
            value = self._reading(num)
            if value is None:
                return None
            if num in self.faults.unavailable:
                return bytes([0, 0xE0, *value[2:]])  # scanning on, reading unavailable
            if num in self.faults.not_scanning:
                return bytes([0, 0x80, *value[2:]])  # events on, scanning disabled
            return value

        def _reading(self, num: int) -> bytes | None:
            s = self.server
            on = s.powered
            if num == TEMP_INLET:
                return bytes([22, 0xC0, 0])
            if num == TEMP_CPU:
                return bytes([round(35 + s.power_w / 20) if on else 24, 0xC0, 0])
            if num == FAN1:
                return bytes([60 if on else 0, 0xC0, 0])
            if num == VOLT12:
                return bytes([120 if on else 0, 0xC0, 0])
            if num == SYS_POWER:
                return bytes([min(255, round(s.power_w / 4)), 0xC0, 0])
            if num in (PSU1, PSU2) and num - PSU1 < self.npsu:
                idx = num - PSU1
                return bytes([0, 0xC0, _psu_bits(s, idx), 0x80])
            if num == OEM_SENSOR and self.faults.oem_sensor:
                return bytes([0, 0xC0, 0x01, 0x80])
            return None

        def observe(self) -> None:
            """Log PSU changes in the SEL (assertions and deassertions of failure, AC lost)."""
            with self.lock:
                for idx in range(self.npsu):
                    now = _psu_bits(self.server, idx)
                    before = self.state.psu_bits[idx]
                    for bit, offset in ((0x02, 1), (0x08, 3)):
                        if (now ^ before) & bit:
                            self._sel_add(PSU1 + idx, offset, assertion=bool(now & bit))
                    self.state.psu_bits[idx] = now

        def _sel_add(self, sensor: int, offset: int, assertion: bool) -> None:
            st = self.state
            ts = int(time.time())
            rec = struct.pack("<HBI", st.next_id, 0x02, ts) + bytes(
                [0x20, 0x00, 0x04, 0x08, sensor, (0 if assertion else 0x80) | 0x6F]
            )
            rec += bytes([offset, 0xFF, 0xFF])
            st.sel.append(_SelEntry(rec))
            st.next_id += 1
            st.last_add = ts

        def handle_raw_request(self, request: dict[str, Any], session: Any) -> Any:
            if not self.standby:
                return  # no standby power, no BMC
            if self.faults.delay:
                # Answer later from a timer, so one slow BMC does not hold up the others.
                threading.Timer(self.faults.delay, self._late, (request, session)).start()
                return None
            return self._answer(request, session)

        def _late(self, request: dict[str, Any], session: Any) -> None:
            with contextlib.suppress(OSError):  # the face may have stopped meanwhile
                self._answer(request, session)

        def _answer(self, request: dict[str, Any], session: Any) -> Any:
            netfn, cmd, data = request["netfn"], request["command"], bytes(request["data"])
            try:
                if netfn == 0x0A:
                    return self._storage(cmd, data, session)
                if netfn == 0x04:
                    return self._sensor(cmd, data, session)
            except (IndexError, struct.error):
                return session.send_ipmi_response(code=0xC7)  # request data length invalid
            super().handle_raw_request(request, session)

        def _storage(self, cmd: int, data: bytes, session: Any) -> Any:
            if cmd == 0x20:  # Get SDR Repository Info
                records = self.sdr_records()
                # The "most recent addition" stamp changes with the content: pyghmi caches
                # SDRs process-wide by device id, firmware and this stamp.
                stamp = zlib.crc32(b"".join(records) + self.server.name.encode())
                rsp = bytes([0x51]) + struct.pack("<HHII", len(records), 0xFFFF, stamp, 0)
                rsp += bytes([0x02])
                return session.send_ipmi_response(data=list(rsp))
            if cmd in (0x22, 0x42):  # Reserve SDR repository / SEL
                return session.send_ipmi_response(data=[0x01, 0x00])
            if cmd == 0x23:  # Get SDR
                records = self.sdr_records()
                rid, offset, count = struct.unpack_from("<H", data, 2)[0], data[4], data[5]
                idx = 0 if rid == 0 else rid - 1
                if idx >= len(records):
                    return session.send_ipmi_response(code=0xCB)
                nxt = idx + 2 if idx + 1 < len(records) else 0xFFFF
                chunk = records[idx][offset : offset + (count if count != 0xFF else 255)]
                return session.send_ipmi_response(data=list(struct.pack("<H", nxt) + chunk))
            if cmd == 0x40:  # Get SEL Info
                self.observe()
                st = self.state
                rsp = bytes([0x51]) + struct.pack("<HHII", len(st.sel), 0xFFFF, st.last_add, 0)
                return session.send_ipmi_response(data=list(rsp + bytes([0x02])))
            if cmd == 0x43:  # Get SEL Entry
                self.observe()
                with self.lock:
                    sel = list(self.state.sel)
                rid = struct.unpack_from("<H", data, 2)[0]
                ids = [struct.unpack_from("<H", e.record, 0)[0] for e in sel]
                if not sel:
                    return session.send_ipmi_response(code=0xCB)
                idx = 0 if rid == 0 else len(sel) - 1 if rid == 0xFFFF else None
                if idx is None:
                    if rid not in ids:
                        return session.send_ipmi_response(code=0xCB)
                    idx = ids.index(rid)
                nxt = ids[idx + 1] if idx + 1 < len(sel) else 0xFFFF
                return session.send_ipmi_response(
                    data=list(struct.pack("<H", nxt) + sel[idx].record)
                )
            if cmd == 0x47:  # Clear SEL
                with self.lock:
                    self.state.sel.clear()
                return session.send_ipmi_response(data=[0x01])
            if cmd == 0x48:  # Get SEL Time
                return session.send_ipmi_response(data=list(struct.pack("<I", int(time.time()))))
            return session.send_ipmi_response(code=0xC1)

        def _sensor(self, cmd: int, data: bytes, session: Any) -> Any:
            if cmd == 0x2D:  # Get Sensor Reading
                value = self.reading(data[0])
                if value is None:
                    return session.send_ipmi_response(code=0xCB)
                return session.send_ipmi_response(data=list(value))
            if cmd == 0x27:  # Get Sensor Thresholds: none readable
                return session.send_ipmi_response(data=[0, 0, 0, 0, 0, 0, 0])
            if cmd == 0x25:  # Get Sensor Hysteresis
                return session.send_ipmi_response(data=[0, 0])
            if cmd == 0x29:  # Get Sensor Event Enable
                return session.send_ipmi_response(data=[0xC0, 0, 0, 0, 0])
            return session.send_ipmi_response(code=0xC1)

    return SiteBmc


def _patch_cipher(serversession: Any) -> None:
    """pyghmi's server always answers cipher suite 3 (HMAC-SHA1, AES); refuse any other
    proposal with RMCP+ status 0x11 (no matching cipher suite) so that a client asking for
    suite 17 first (pyghmi's own client does) retries with suite 3 instead of failing later."""
    cls = serversession.ServerSession
    original = cls.create_open_session_response
    if getattr(original, "_facility_agent", False):
        return

    def create_open_session_response(self: Any, request: Any) -> Any:
        request = bytearray(request)
        if len(request) >= 32 and (request[12] != 0x01 or request[20] != 0x01):
            return bytearray([request[0], 0x11, 0, 0]) + request[4:8]
        return original(self, request)

    create_open_session_response._facility_agent = True  # type: ignore[attr-defined]
    cls.create_open_session_response = create_open_session_response


#: BMCs one child process serves (a site of 200 servers runs 4 of them).
BMCS_PER_PROCESS = 50
#: Real seconds between two looks at the model for state to send to the BMC processes.
STATE_EVERY = 0.02


class _Child:
    """One BMC process and the servers it serves."""

    def __init__(self, proc: asyncio.subprocess.Process, names: list[str]) -> None:
        self.proc = proc
        self.names = names
        self.sent: dict[str, dict[str, Any]] = {}
        self.reader: asyncio.Task[None] | None = None

    def send(self, msg: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write((json.dumps(msg) + "\n").encode())


class IpmiFace:
    """Every simulated server's BMC; `ports` maps server name -> UDP port once started."""

    def __init__(
        self,
        site: SimulatedSite,
        host: str = "127.0.0.1",
        ports: dict[str, int] | int | None = 0,
        users: dict[str, str] | None = None,
        per_process: int = BMCS_PER_PROCESS,
    ) -> None:
        self.site = site
        self.host = host
        self.users = dict(users or DEFAULT_USERS)
        self.per_process = max(1, per_process)
        names = list(site.servers)
        if isinstance(ports, dict):
            self._wanted = {n: ports.get(n, 0) for n in names}
        else:
            base = ports or 0
            self._wanted = {n: (base + i if base else 0) for i, n in enumerate(names)}
        self.ports: dict[str, int] = {}
        self._faults = {n: BmcFaults() for n in names}
        self._children: list[_Child] = []
        self._by_server: dict[str, _Child] = {}
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._next_ack = 0
        self._pump: asyncio.Task[None] | None = None

    @property
    def pids(self) -> list[int]:
        """The BMC processes (tests check that they end)."""
        return [c.proc.pid for c in self._children]

    async def start(self) -> None:
        names = list(self.site.servers)
        try:
            for i in range(0, len(names), self.per_process):
                await self._spawn(names[i : i + self.per_process])
        except BaseException:
            await self.stop()
            raise
        self._pump = asyncio.create_task(self._send_state(), name="sim-ipmi-state")

    async def _spawn(self, names: list[str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        child = _Child(proc, names)
        self._children.append(child)
        servers = {}
        for n in names:
            state = _view_state(self.site.servers[n])
            child.sent[n] = state
            servers[n] = {"port": self._wanted[n], "state": state}
        child.send({"host": self.host, "users": self.users, "servers": servers})
        assert proc.stdout is not None
        async with asyncio.timeout(30.0):
            line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the BMC process {proc.pid} ended before it listened")
        ports: dict[str, int] = json.loads(line)["ports"]
        self.ports.update(ports)
        for n in names:
            self._by_server[n] = child
        child.reader = asyncio.create_task(self._read(child), name=f"sim-ipmi-{proc.pid}")

    async def _read(self, child: _Child) -> None:
        """Power commands and acknowledgements from one BMC process."""
        assert child.proc.stdout is not None
        while line := await child.proc.stdout.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "power" in msg:
                self._power(str(msg["server"]), str(msg["power"]))
            elif "ack" in msg:
                fut = self._acks.pop(int(msg["ack"]), None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def _power(self, name: str, op: str) -> None:
        server = self.site.servers.get(name)
        if server is None:
            return
        if op == "power_cycle":
            server.power_off()
            server.power_on()
        elif op in ("power_off", "power_on", "shutdown"):
            getattr(server, op)()
        self._push()  # the BMC shows the new power state at once

    def _push(self) -> None:
        for child in self._children:
            changed = {}
            for n in child.names:
                state = _view_state(self.site.servers[n])
                if state != child.sent.get(n):
                    changed[n] = state
                    child.sent[n] = state
            if changed:
                child.send({"state": changed})

    async def _send_state(self) -> None:
        while True:
            self._push()
            await asyncio.sleep(STATE_EVERY)

    def faults(self, server: str) -> BmcFaults:
        """The misbehaviour now switched on for one server's BMC (a copy; see set_faults)."""
        return BmcFaults(**asdict(self._faults[server]))

    async def set_faults(self, server: str, **changes: Any) -> None:
        """Switch misbehaviour of one server's BMC; returns once its process applies it."""
        faults = BmcFaults(**{**asdict(self._faults[server]), **changes})
        self._faults[server] = faults
        self._next_ack += 1
        ack = self._next_ack
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[ack] = fut
        self._by_server[server].send({"faults": {server: asdict(faults)}, "id": ack})
        async with asyncio.timeout(10.0):
            await fut

    async def stop(self) -> None:
        await cancel(self._pump)
        self._pump = None
        for child in self._children:
            stdin = child.proc.stdin
            if stdin is not None and not stdin.is_closing():
                stdin.close()  # the child's cue to close its sockets and exit
        for child in self._children:
            try:
                async with asyncio.timeout(5.0):
                    await child.proc.wait()
            except TimeoutError:
                child.proc.kill()
                await child.proc.wait()
            await cancel(child.reader)
        self._children.clear()
        self._by_server.clear()


# --------------------------------------------------------------------------------------------
# The BMC process
# --------------------------------------------------------------------------------------------


def _serve_forever(stop: threading.Event) -> None:
    from pyghmi.ipmi.private import session as ps

    while not stop.is_set():
        try:
            ps.Session.wait_for_rsp(timeout=0.2)
        except Exception:
            log.exception("simulated BMC loop")
            time.sleep(0.05)


def child_main(inp: IO[str], out: IO[str]) -> None:
    """Serve the BMCs described by the first line of `inp`; apply state lines until EOF."""
    init = json.loads(inp.readline())
    patch_socket_modes()
    cls = _make_bmc_class()
    lock = threading.Lock()

    def send(msg: dict[str, Any]) -> None:
        with lock, contextlib.suppress(OSError, ValueError):
            out.write(json.dumps(msg) + "\n")
            out.flush()

    bmcs: dict[str, Any] = {}
    for name, spec in init["servers"].items():
        view = ServerView(name, **spec["state"])
        bmcs[name] = cls(init["host"], init["users"], view, int(spec["port"]), send)
    _wake_io_thread()
    stop = threading.Event()
    thread = threading.Thread(target=_serve_forever, args=(stop,), name="sim-ipmi", daemon=True)
    thread.start()
    send({"ports": {n: b.port for n, b in bmcs.items()}})
    for line in inp:
        msg = json.loads(line)
        for name, state in (msg.get("state") or {}).items():
            bmc = bmcs[name]
            for key, value in state.items():
                setattr(bmc.server, key, value)
            bmc.observe()  # a PSU change lands in the SEL even if nobody polls
        for name, faults in (msg.get("faults") or {}).items():
            bmcs[name].faults = BmcFaults(**faults)
        if "id" in msg:
            send({"ack": msg["id"]})
    stop.set()
    thread.join(2.0)
    _close_sockets(list(bmcs.values()))


def _close_sockets(bmcs: list[Any]) -> None:
    """Take the BMCs' sockets out of pyghmi's I/O loop first, then close them."""
    from pyghmi.ipmi.private import session as ps

    socks = [b.serversocket for b in bmcs]
    for sock in socks:
        with contextlib.suppress(ValueError):
            ps.iosockets.remove(sock)
        ps.Session.bmc_handlers.pop(sock, None)
    # Client sessions of these BMCs too: a later BMC on the same port would inherit them.
    mine = set(map(id, bmcs))
    for addr, by_port in list(ps.Session.bmc_handlers.items()):
        if not isinstance(by_port, dict):
            continue
        for port, sess in list(by_port.items()):
            if id(getattr(sess, "bmc", None)) in mine:
                del by_port[port]
        if not by_port:
            ps.Session.bmc_handlers.pop(addr, None)
    _wake_io_thread()
    time.sleep(0.05)
    for sock in socks:
        sock.close()


_ANCHOR: list[Any] = []


def _anchor_io_thread() -> None:
    """Give pyghmi's I/O thread a socket of its own before any BMC socket exists.

    pyghmi wakes its select() by writing to `iosockets[0]`; if that were a BMC socket, closing
    the BMC would leave the thread asleep on a dead descriptor and deaf to every later BMC."""
    from pyghmi.ipmi.private import session as ps

    if not _ANCHOR:
        if ps.Session.socketchecking is None:
            ps.Session.socketchecking = threading.Lock()
        with ps.Session.socketchecking:
            _ANCHOR.append(ps.Session._assignsocket())


def _wake_io_thread() -> None:
    """pyghmi only selects on the sockets it had when it went to sleep (up to 300 s)."""
    from pyghmi.ipmi.private import session as ps

    with contextlib.suppress(Exception):
        ps.iosockets[0].sendto(b"\x01", (ps.myself, ps.iosockets[0].getsockname()[1]))


if __name__ == "__main__":
    # Ctrl-C in a terminal reaches the whole process group: the simulator shuts down and
    # closes our stdin, which is our cue (no KeyboardInterrupt traceback from here).
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol has stdout to itself: pyghmi prints some errors, so those go to stderr.
    _proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format="sim-ipmi[%(process)d] %(message)s")
    child_main(sys.stdin, _proto)
    _proto.flush()
    os._exit(0)
