"""Bus owners: one per serial port (RTU) or per TCP server, shared by every unit behind it.

An RS-485 line carries one frame at a time, so every device (unit id) on a port goes through
one `ModbusLink` that:

- runs whole polls one after another in arrival order (asyncio.Lock is FIFO), so with each
  device polling once per interval the units take turns: a busy unit cannot starve the others;
- keeps the inter-frame gap (3.5 character times, 1.75 ms above 19200 baud) between frames;
- gives each request a short timeout of its own and stops a poll at its unit's first silence,
  so a dead unit costs the line one request timeout per poll, not one per block;
- opens the port lazily and reopens it after any I/O error, so a USB adapter that is unplugged
  and plugged back in is picked up again by the next poll.

pymodbus reports a bad CRC, a truncated frame and a reply from another unit all as "no
response"; the link watches the bytes that came back to tell them apart in its errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, asdict, dataclass
from typing import Any, Literal, TypeVar

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ExceptionResponse

from facility_agent.core.driver import DeviceError, DeviceTimeout, NotFoundError, ProtocolError

# pymodbus logs every timeout and skipped frame at ERROR; the driver raises clear errors of its
# own, so the library's log would only repeat them louder.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
log = logging.getLogger(__name__)

T = TypeVar("T")
Table = Literal["holding", "input", "coil", "discrete"]

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge (busy with a long command)",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusExceptionError(ProtocolError):
    """The unit answered with a Modbus exception response."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


class ModbusMapError(ModbusExceptionError, NotFoundError):
    """Illegal function or address: the profile does not fit this device; retrying cannot help."""

    permanent = True


class UnitSilent(DeviceTimeout):
    """The unit did not answer at all."""


def char_bits(bytesize: int, parity: str, stopbits: float) -> float:
    """Bits on the line per character: start + data + parity + stop."""
    return 1 + bytesize + (0 if parity.upper() == "N" else 1) + stopbits


def frame_gap(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: float = 1) -> float:
    """Modbus over serial line spec 2.5.1.1: 3.5 character times, fixed 1.75 ms above 19200."""
    if baudrate > 19200:
        return 0.00175
    return 3.5 * char_bits(bytesize, parity, stopbits) / baudrate


def guard_framer(framer: Any) -> None:
    """Make a pymodbus framer take a frame it cannot decode as garbage instead of raising.

    pymodbus 3.16's framers raise ModbusIOException on some garbled frames ("Unable to decode
    request": a TCP frame with an unknown function code, found by bench/fuzz.py). That happens
    inside the transport's data_received, where asyncio logs a traceback and drops the
    connection. Consumed without a PDU, the frame instead leaves the request unanswered, and
    the link reports a garbled reply (see `_classify_silence`)."""
    inner = framer.handleFrame

    def handle(data: bytes, exp_devid: int, exp_tid: int) -> tuple[int, Any]:
        try:
            return inner(data, exp_devid, exp_tid)  # type: ignore[no-any-return]
        except ModbusException:
            return len(data), None

    framer.handleFrame = handle


@dataclass(frozen=True)
class SerialParams:
    """A serial port and its line settings, named as pymodbus's serial client takes them."""

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1


@dataclass(frozen=True)
class TcpParams:
    host: str
    port: int = 502


LinkKey = SerialParams | TcpParams


@dataclass(eq=False)
class ModbusLink:
    """One serial port or one TCP server, and the order in which units use it."""

    params: LinkKey
    _: KW_ONLY
    request_timeout: float
    retries: int
    #: Seconds of silence kept between frames; None = what the line needs (none on TCP).
    gap: float | None = None
    connect_timeout: float = 2.0

    def __post_init__(self) -> None:
        p = self.params
        if isinstance(p, SerialParams):
            self.where = f"serial port {p.port}"
            line_gap = frame_gap(p.baudrate, p.bytesize, p.parity, p.stopbits)
        else:
            self.where = f"Modbus TCP server {p.host}:{p.port}"
            line_gap = 0.0
        self._gap = line_gap if self.gap is None else self.gap
        #: Devices that use the link (acquire_link, release_link).
        self.users = 0
        self.requests = 0
        self._lock = asyncio.Lock()
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._last_frame = 0.0
        self._received = bytearray()
        #: Units that did not answer their last request: no retries for them until they do.
        self._silent: set[int] = set()

    # ---- connection ---------------------------------------------------------------------

    def _watch(self, client: AsyncModbusSerialClient | AsyncModbusTcpClient) -> None:
        """Count every byte that arrives, before pymodbus drops what it cannot frame (it
        silently discards a buffer over 256 bytes, bad CRCs and other units' frames)."""
        proto = client.ctx
        inner = proto.datagram_received

        def counted(data: bytes, addr: tuple[str, int] | None) -> None:
            self._received += data
            inner(data, addr)

        setattr(proto, "datagram_received", counted)  # noqa: B010 - patching an instance method
        guard_framer(proto.framer)

    def _new_client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        p = self.params
        # Retries and reconnects are ours (reconnect_delay=0 turns pymodbus's own off): we stop
        # retrying a silent unit, and reopen a vanished port at the next poll.
        if isinstance(p, SerialParams):
            return AsyncModbusSerialClient(
                framer=FramerType.RTU,
                timeout=self.request_timeout,
                retries=0,
                reconnect_delay=0,
                **asdict(p),
            )
        return AsyncModbusTcpClient(
            p.host, port=p.port, timeout=self.request_timeout, retries=0, reconnect_delay=0
        )

    async def _ensure_open(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        client = self._client
        if client is not None and client.connected:
            return client
        self._drop()
        client = self._new_client()
        self._watch(client)
        try:
            async with asyncio.timeout(self.connect_timeout):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise DeviceError(f"cannot open {self.where}: {exc}") from None
        if not ok:
            client.close()
            what = "cannot open" if isinstance(self.params, SerialParams) else "cannot connect to"
            raise DeviceError(f"{what} {self.where}")
        self._client = client
        return client

    def _drop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    async def close(self) -> None:
        async with self._lock:
            self._drop()

    # ---- use ----------------------------------------------------------------------------

    async def transaction(self, job: Callable[[ModbusLink], Awaitable[T]]) -> T:
        """Run `job` (a device's whole poll or action) with the line to itself."""
        async with self._lock:
            try:
                return await job(self)
            except asyncio.CancelledError:
                # Cut off mid-request by the poll deadline: a late reply could be taken for the
                # next request's, so start the next one on a fresh port.
                self._drop()
                raise

    async def _wait_gap(self) -> None:
        if self._gap > 0:
            remaining = self._last_frame + self._gap - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)

    async def read(
        self, unit: int, table: Table, address: int, count: int
    ) -> list[int] | list[bool]:
        """One read request (FC1/2/3/4); raises a DeviceError naming the unit and the link."""

        async def call(c: Any) -> Any:
            if table == "holding":
                return await c.read_holding_registers(address, count=count, device_id=unit)
            if table == "input":
                return await c.read_input_registers(address, count=count, device_id=unit)
            if table == "coil":
                return await c.read_coils(address, count=count, device_id=unit)
            return await c.read_discrete_inputs(address, count=count, device_id=unit)

        rr = await self._request(unit, f"read {table} {address}+{count}", call)
        return self.check_read(unit, table, address, count, rr)

    def check_read(
        self, unit: int, table: Table, address: int, count: int, rr: Any
    ) -> list[int] | list[bool]:
        """The values of a read reply that pymodbus accepted, or a ProtocolError; no I/O, so the
        fuzzer (bench/fuzz.py) drives it with every frame pymodbus lets through."""
        what = f"read {table} {address}+{count}"
        if isinstance(self.params, SerialParams):
            # pymodbus takes the first valid frame and ignores what trails it; on a shared line
            # trailing bytes mean a unit talking out of turn or a broken frame: not trusted.
            data = (count + 7) // 8 if table in ("coil", "discrete") else 2 * count
            expected = 5 + data
            if len(self._received) > expected:
                raise ProtocolError(
                    self._reason(
                        unit,
                        f"{what}: oversized frame "
                        f"({len(self._received)} bytes, {expected} expected)",
                    )
                )
        if table in ("coil", "discrete"):
            bits = list(rr.bits)
            if len(bits) < count:
                raise ProtocolError(self._reason(unit, f"{what}: short reply ({len(bits)} bits)"))
            return [bool(b) for b in bits[:count]]
        regs = list(rr.registers)
        if len(regs) != count:
            raise ProtocolError(
                self._reason(unit, f"{what}: {len(regs)} registers in the reply, not {count}")
            )
        return regs

    async def write(
        self, unit: int, table: Table, address: int, values: Sequence[int | bool]
    ) -> None:
        """One write request: FC16 (registers, all in one frame) or FC5 (one coil)."""

        async def call(c: Any) -> Any:
            if table == "coil":
                return await c.write_coil(address, bool(values[0]), device_id=unit)
            return await c.write_registers(address, [int(v) for v in values], device_id=unit)

        await self._request(unit, f"write {table} {address}", call, retry=False)

    def _reason(self, unit: int, text: str) -> str:
        return f"unit {unit} on {self.where}: {text}"

    async def _request(
        self, unit: int, what: str, call: Callable[[Any], Awaitable[Any]], retry: bool = True
    ) -> Any:
        tries = 1 + (self.retries if retry and unit not in self._silent else 0)
        error: DeviceError | None = None
        for _ in range(tries):
            client = await self._ensure_open()
            await self._wait_gap()
            self._received.clear()
            self.requests += 1
            try:
                rr = await call(client)
            except ModbusIOException as exc:
                error = self._classify_silence(unit, what, exc)
                continue
            except (ConnectionException, OSError) as exc:
                self._drop()
                raise DeviceError(self._reason(unit, f"{what}: connection lost ({exc})")) from None
            except ModbusException as exc:
                self._drop()
                raise ProtocolError(self._reason(unit, f"{what}: {exc}")) from None
            finally:
                self._last_frame = time.monotonic()
            if client is not self._client or not client.connected:
                self._drop()
            self._silent.discard(unit)
            if isinstance(rr, ExceptionResponse) or rr.isError():
                code = int(getattr(rr, "exception_code", 0))
                name = EXCEPTION_NAMES.get(code, f"exception code {code}")
                reason = self._reason(unit, f"{what}: {name}")
                if code in (1, 2):
                    raise ModbusMapError(reason, code)
                raise ModbusExceptionError(reason, code)
            return rr
        assert error is not None
        raise error

    def _classify_silence(self, unit: int, what: str, exc: ModbusIOException) -> DeviceError:
        got = bytes(self._received)
        if isinstance(self.params, TcpParams) and self._client and not self._client.connected:
            self._drop()
            return DeviceError(self._reason(unit, f"{what}: the server closed the connection"))
        if not got:
            self._silent.add(unit)
            return UnitSilent(
                self._reason(unit, f"{what}: no reply within {self.request_timeout:g} s")
            )
        # The unit id is the first byte of an RTU frame (trusted only when its CRC checks), byte
        # 6 of a TCP one (when the MBAP header's protocol id is 0).
        if isinstance(self.params, TcpParams):
            other = got[6] if len(got) > 7 and got[2:4] == b"\0\0" else None
        elif len(got) >= 4 and FramerRTU.check_CRC(got[:-2], got[-2] << 8 | got[-1]):
            other = got[0]
        else:
            other = None
        if other is not None and other != unit:
            return ProtocolError(self._reason(unit, f"{what}: the reply came from unit {other}"))
        if "device id" in str(exc):
            return ProtocolError(self._reason(unit, f"{what}: the reply came from another unit"))
        return ProtocolError(
            self._reason(
                unit,
                f"{what}: garbled reply ({len(got)} bytes: bad CRC, truncated or oversized frame)",
            )
        )


# --------------------------------------------------------------------------------------------
# One link per port or server, per event loop
# --------------------------------------------------------------------------------------------

_LINKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[LinkKey, ModbusLink]] = (
    weakref.WeakKeyDictionary()
)


def acquire_link(
    params: LinkKey, *, request_timeout: float, retries: int, gap: float | None
) -> ModbusLink:
    """The shared link for a port or server; the first device's settings open it.

    Devices on one serial port must agree on the line settings: those are part of the key, so
    a device with another baud rate on the same port gets a link of its own (and the two will
    collide on the wire, which the docs warn about)."""
    links = _LINKS.setdefault(asyncio.get_running_loop(), {})
    link = links.get(params)
    if link is None:
        link = links[params] = ModbusLink(
            params, request_timeout=request_timeout, retries=retries, gap=gap
        )
    link.users += 1
    return link


async def release_link(link: ModbusLink) -> None:
    link.users -= 1
    if link.users <= 0:
        links = _LINKS.get(asyncio.get_running_loop(), {})
        if links.get(link.params) is link:
            del links[link.params]
        await link.close()
