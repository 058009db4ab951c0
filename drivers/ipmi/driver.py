"""The IPMI driver: a server's BMC over RMCP+ (IPMI 2.0 "lanplus"), through pyghmi.

pyghmi is blocking, so every BMC gets ONE worker thread of its own: requests to one BMC are
serialized (a BMC handles one session's requests in order anyway), and a BMC that takes 10 s,
or never answers, only ever holds up its own thread. Every wait inside that thread ends at the
call's deadline (pyghmi's waits are replaced by bounded ones that raise past it), so the thread
always comes back with a typed error; a request still running when the next poll is due makes
that poll fail at once ("still busy") instead of queueing behind it. The session is kept
between polls and dropped on any error, so the next poll logs in again. Why pyghmi used to wait
forever, and what is patched: `_patch_socket_modes`, `_patch_io_wait`, drivers/README.md.

A poll reads the chassis power state, every SDR sensor and any new SEL entries (SEL Info first,
so an unchanged log costs one request).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, SecretStr

from facility_agent.core.driver import (
    ActionError,
    AuthError,
    DeviceConfig,
    DeviceError,
    DeviceTimeout,
    Driver,
    ProtocolError,
    SimulatorFaces,
    own_config,
    with_keys,
)
from facility_agent.core.model import Sample, utcnow
from facility_agent.core.units import Duration
from facility_agent.drivers.ipmi.decode import (
    SEL_KINDS,
    SelRecord,
    SensorValue,
    decode_6bit_ascii,
    sel_kind,
    summarize,
)
from facility_wire.pyghmi_sockets import patch_socket_modes

T = TypeVar("T")

Privilege = Literal["user", "operator", "administrator"]
_PRIV_LEVEL = {"user": 2, "operator": 3, "administrator": 4}

#: Power actions the policy engine can call, and the chassis state each one ends in.
#: How long an action waits for a sensor poll in flight on the same BMC before it gives up.
ACTION_WAIT = 30.0
#: How far past its deadline a call may run before the event loop stops waiting for its
#: thread (the thread ends by itself at the deadline: every wait inside it is bounded).
CALL_MARGIN = 1.0

POWER_ACTIONS: dict[str, str] = {
    "power_on": "on",
    "soft_off": "off",
    "hard_off": "off",
    "power_off": "off",
    "power_cycle": "on",
}
_PYGHMI_POWER = {"power_on": "on", "soft_off": "shutdown", "hard_off": "off", "power_off": "off"}

#: Status flag events the site state raises from this driver's flags (docs/events.md).
FLAG_EVENTS: list[dict[str, str]] = [
    {
        "flag": "PSU_FAIL",
        "type": "server.psu_failed",
        "severity": "warning",
        "message": "{device}: a power supply has failed (redundancy {psu.redundancy})",
        "cleared_type": "server.psu_ok",
        "cleared_message": "{device}: no power supply reports a failure any more",
    },
    {
        "flag": "PSU_NO_INPUT",
        "type": "server.psu_input_lost",
        "severity": "warning",
        "message": "{device}: a power supply lost its input (redundancy {psu.redundancy})",
        "cleared_type": "server.psu_input_restored",
        "cleared_message": "{device}: every power supply has input again",
    },
    {
        "flag": "NOT_REDUNDANT",
        "type": "server.psu_redundancy_degraded",
        "severity": "warning",
        "message": "{device}: power supply redundancy is {psu.redundancy}",
        "cleared_type": "server.psu_redundancy_restored",
        "cleared_message": "{device}: power supply redundancy restored",
    },
    {
        "flag": "POWER_OFF",
        "type": "server.power_off",
        "severity": "info",
        "message": "{device}: chassis power is off",
        "cleared_type": "server.power_on",
        "cleared_message": "{device}: chassis power is on",
    },
    {
        "flag": "SEL_PSU_FAILURE",
        "type": "server.sel.psu_failure",
        "severity": "warning",
        "message": "{device}: the BMC logged a power supply failure ({sel.last})",
    },
    {
        "flag": "SEL_AC_LOST",
        "type": "server.sel.ac_lost",
        "severity": "warning",
        "message": "{device}: the BMC logged lost AC input ({sel.last})",
    },
]


class IpmiDeviceConfig(DeviceConfig):
    """Site-file keys of a `driver: ipmi` device (see drivers/README.md)."""

    host: str = Field(min_length=1)
    port: int = Field(default=623, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=16)
    password: SecretStr
    #: The session's privilege; power actions need operator or administrator.
    privilege: Privilege = "administrator"
    #: A BMC is slow (hundreds of ms per sensor on some), so the default interval is longer.
    interval: Duration = 10.0
    #: Deadline of one power action's verification (the state has to be reached by then).
    action_timeout: Duration = 120.0
    #: The watts sensor that is the server's draw (`server.power`); default: a sensor named
    #: like `Sys Power`/`Total Power`, else the sum of every watts sensor.
    power_sensor: str | None = None
    #: Read the SEL for PSU failure and AC loss entries (one cheap request when unchanged).
    read_sel: bool = True
    #: A sensor sweep is many requests: the timeout defaults to the interval, capped at 30 s.
    timeout_cap: ClassVar[float] = 30.0


def _patch_pyghmi() -> None:
    """pyghmi 1.6.19 never returns from decoding a 6-bit packed SDR id string (a busy loop
    that would pin a CPU and the BMC's thread forever); decode those ourselves."""
    from pyghmi.ipmi import sdr

    original = sdr.SDREntry.tlv_decode
    if getattr(original, "_facility_agent", False):
        return

    def tlv_decode(self: Any, tlv: int, data: Any) -> Any:
        if (tlv & 0xC0) >> 6 == 2:
            return decode_6bit_ascii(bytes(data)[: tlv & 0x1F])
        return original(self, tlv, data)

    tlv_decode._facility_agent = True  # type: ignore[attr-defined]
    sdr.SDREntry.tlv_decode = tlv_decode
    patch_socket_modes()
    _patch_io_wait()


class _Expired(BaseException):
    """Raised inside pyghmi when a call's deadline has passed. A BaseException, so pyghmi's
    own `except Exception` blocks cannot swallow it: the thread unwinds back to the driver."""


#: The deadline (monotonic) of the driver call running on this thread; unset = no deadline.
_CALL = threading.local()


def _check_deadline() -> float | None:
    """Seconds left for this thread's call (None: no deadline); raises once it has passed."""
    deadline: float | None = getattr(_CALL, "deadline", None)
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Expired
    return left


def _patch_io_wait() -> None:
    """Every pyghmi wait ends: at its own timeout, and at the driver call's deadline.

    pyghmi's `_io_wait` sleeps on an event with no timeout and relies on its I/O thread to
    wake it; a stalled I/O thread (see `_patch_socket_modes`) or a lost wake-up left the caller
    asleep forever. It also loses wake-ups: a reply read before the caller's waiter is queued
    is noticed only at the retransmit timer (PHYSICS: p99 ~0.7 s), so a directed wait looks
    every 5 ms for a reply already queued or handled for its BMC. `Session.wait_for_rsp` also
    checks the deadline, since pyghmi spins on it in `while self.logging:` loops."""
    from pyghmi.ipmi.private import session as ps

    original = ps._io_wait
    if getattr(original, "_facility_agent", False):
        return

    def replied(addr: Any) -> bool:
        handlers = ps.Session.bmc_handlers.get(addr) or {}
        return any(
            getattr(s, "pktqueue", None) or getattr(s, "lastresponse", None) is not None
            for s in list(handlers.values())
        )

    def io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
        left = _check_deadline()
        timeout = max(0.0, float(timeout or 0.0))
        if left is not None:
            timeout = min(timeout, left)
        evt = threading.Event()
        if evq is not None:
            evq.append(evt)
        deadline = timeout + ps._monotonic_time()
        ps.ioqueue.append((deadline, evt, myaddr))
        if deadline < ps.selectdeadline:
            with contextlib.suppress(Exception):
                ps.iosockets[0].sendto(b"\x01", (ps.myself, ps.iosockets[0].getsockname()[1]))
        directed = myaddr is not None and evq is None
        while not evt.wait(0.005 if directed else 0.05):
            if (directed and replied(myaddr)) or ps._monotonic_time() >= deadline:
                break
        _check_deadline()

    wait_for_rsp = ps.Session.wait_for_rsp.__func__

    def checked_wait_for_rsp(cls: Any, timeout: Any = None, callout: bool = True) -> Any:
        _check_deadline()
        return wait_for_rsp(cls, timeout, callout)

    io_wait._facility_agent = True  # type: ignore[attr-defined]
    ps._io_wait = io_wait
    ps.Session.wait_for_rsp = classmethod(checked_wait_for_rsp)


def _forget_sessions(host: str, port: int) -> None:
    """Mark every pyghmi session of this BMC broken after a call was cut off mid-way.

    A session left half logged in stays in pyghmi's tables, and the next `Command()` for the
    same BMC would join it and wait for a login that never ends."""
    from pyghmi.ipmi.private import session as ps

    found = [s for s in list(ps.Session.initting_sessions.values())]
    for by_port in list(ps.Session.bmc_handlers.values()):
        if isinstance(by_port, dict):
            found.extend(by_port.values())
    for sess in found:
        if getattr(sess, "bmc", None) != host or getattr(sess, "port", None) != port:
            continue
        if getattr(sess, "servermode", False):
            continue
        _CALL.deadline = time.monotonic() + 0.5  # logout may send one request
        try:
            sess._mark_broken("the driver gave up on this session")
        except (Exception, _Expired):
            sess.logged = 0
            with contextlib.suppress(Exception, _Expired):
                sess._mark_broken("the driver gave up on this session")
        finally:
            _CALL.deadline = None


_PATCH_LOCK = threading.Lock()
_patched = False


def _ensure_patched() -> None:
    global _patched
    with _PATCH_LOCK:
        if not _patched:
            _patch_pyghmi()
            _patched = True


class _Bmc:
    """The thread side: one pyghmi session and what it knows. Only its worker calls it."""

    def __init__(self, cfg: IpmiDeviceConfig) -> None:
        self.cfg = cfg
        self.where = f"BMC {cfg.host}:{cfg.port}"
        self.cmd: Any = None
        self.sensor_names: dict[int, str] = {}
        self.sel_stamp: tuple[int, int, int] | None = None
        self.sel_last_id: int | None = None

    # ---- session ------------------------------------------------------------------------

    def session(self) -> Any:
        if self.cmd is None:
            _ensure_patched()
            from pyghmi.ipmi import command

            cfg = self.cfg
            # bytes credentials: pyghmi then shares one session between devices on one BMC
            # (with str credentials a second Command() for the same BMC blocks forever).
            try:
                self.cmd = command.Command(
                    bmc=cfg.host,
                    userid=cfg.username.encode(),
                    password=cfg.password.get_secret_value().encode(),
                    port=cfg.port,
                    privlevel=_PRIV_LEVEL[cfg.privilege],
                    keepalive=True,
                )
            except Exception as exc:
                raise self.translate(exc, "logging in") from None
        return self.cmd

    def drop(self) -> None:
        cmd, self.cmd = self.cmd, None
        if cmd is not None:
            with contextlib.suppress(Exception, _Expired):
                cmd.ipmi_session.logout()

    def forget(self) -> None:
        """After a call was cut off: no session of this BMC is left half-way in pyghmi."""
        self.cmd = None
        _forget_sessions(self.cfg.host, self.cfg.port)

    def translate(self, exc: BaseException, doing: str) -> DeviceError:
        """A pyghmi exception as a DeviceError that names the BMC and never the password."""
        text = str(exc) or type(exc).__name__
        secret = self.cfg.password.get_secret_value()
        if secret:
            text = text.replace(secret, "***")
        low = text.lower()
        if "password" in low or "unauthorized name" in low or "insufficient privilege" in low:
            return AuthError(
                f"{self.where} refused user {self.cfg.username!r} ({text}): "
                "wrong user name or password, or a privilege the account does not have"
            )
        if "timeout" in low or "timed out" in low or "no longer connected" in low:
            return DeviceTimeout(f"{self.where}: no answer while {doing} ({text})")
        if isinstance(exc, ValueError | struct.error | IndexError | KeyError | TypeError):
            return ProtocolError(f"{self.where}: malformed reply while {doing} ({text})")
        return DeviceError(f"{self.where}: {doing} failed: {text}")

    # ---- reads --------------------------------------------------------------------------

    def power_state(self) -> str:
        state = self.session().get_power()
        if not isinstance(state, dict) or "powerstate" not in state:
            raise ProtocolError(f"{self.where}: no power state in the chassis status reply")
        return str(state["powerstate"])

    def sensors(self) -> list[SensorValue]:
        cmd = self.session()
        out: list[SensorValue] = []
        for r in cmd.get_sensor_data():
            value = r.value if isinstance(r.value, int | float) else None
            out.append(
                SensorValue(
                    name=str(r.name),
                    type=str(r.type or "unknown"),
                    value=None if value is None else float(value),
                    units=str(r.units or ""),
                    health=int(r.health or 0),
                    states=tuple(str(s) for s in (r.states or ())),
                    unavailable=bool(getattr(r, "unavailable", 0)),
                )
            )
        sdr = cmd.init_sdr()
        self.sensor_names = {
            int(getattr(s, "sensor_number", n)): str(s.name) for n, s in sdr.sensors.items()
        }
        return out

    def new_sel(self) -> list[SelRecord]:
        """SEL entries added since the last call; none on the first (only news matter)."""
        cmd = self.session()
        info = cmd.xraw_command(netfn=0x0A, command=0x40)["data"]
        if len(info) < 14:
            raise ProtocolError(f"{self.where}: short SEL Info reply")
        # Get SEL Info (IPMI 2.0 31.2), after the completion code: version, entries (2 bytes),
        # free space (2), last addition (4), last erase (4), operations. The timestamps have
        # a resolution of one second, so the count is part of "has anything changed".
        entries, _free, added, erased = struct.unpack_from("<HHII", info, 1)
        stamp = (entries, added, erased)
        if stamp == self.sel_stamp:
            return []
        first_read = self.sel_stamp is None
        self.sel_stamp = stamp
        records: list[SelRecord] = []
        next_id = 0x0000
        for _ in range(min(entries, 4096)):
            rsp = cmd.xraw_command(
                netfn=0x0A, command=0x43, data=(0, 0, *struct.pack("<H", next_id), 0, 0xFF)
            )
            data = bytes(rsp["data"])
            if len(data) < 18:
                raise ProtocolError(f"{self.where}: short SEL entry")
            next_id = struct.unpack_from("<H", data, 0)[0]
            records.append(SelRecord.parse(data[2:18]))
            if next_id == 0xFFFF:
                break
        last = self.sel_last_id
        self.sel_last_id = records[-1].record_id if records else None
        if first_read:
            return []
        if last is None:
            return records
        ids = [r.record_id for r in records]
        if last in ids:
            return records[ids.index(last) + 1 :]
        return records  # the log was cleared or wrapped: everything is new

    # ---- writes -------------------------------------------------------------------------

    def set_power(self, state: str) -> str:
        result = self.session().set_power(state, wait=False)
        if isinstance(result, dict) and "error" in result:
            raise ActionError(f"{self.where}: {result['error']}")
        return str(result.get("pendingpowerstate", state)) if isinstance(result, dict) else state


class IpmiDriver(Driver):
    """One server's BMC."""

    name = "ipmi"
    metrics_doc = "sensors, PSU status and redundancy from the BMC's SDR"
    config_model = IpmiDeviceConfig
    #: Time between two power-state reads while an action waits for its state.
    verify_every: ClassVar[float] = 0.5

    @classmethod
    def aim_at_simulator(cls, device: DeviceConfig, sim: SimulatorFaces) -> DeviceConfig | None:
        """Each simulated server has a BMC of its own, on its own port."""
        port = sim.ports.get(f"ipmi:{device.id}")
        if port is None:
            return None
        return with_keys(own_config(device, IpmiDeviceConfig), host="127.0.0.1", port=port)

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        self.cfg = config = own_config(config, IpmiDeviceConfig)
        self._bmc = _Bmc(config)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"ipmi-{config.id}"
        )
        self._busy: concurrent.futures.Future[Any] | None = None
        self._action_lock = asyncio.Lock()

    @property
    def where(self) -> str:
        return self._bmc.where

    @classmethod
    def declared_events(cls) -> list[dict[str, str]]:
        return [dict(e) for e in FLAG_EVENTS]

    def flag_events(self) -> list[dict[str, str]]:
        """The events this driver's status flags mean (read by the agent's site state)."""
        return [dict(e) for e in FLAG_EVENTS]

    async def _call(
        self, fn: Callable[[], T], doing: str, timeout: float | None = None, wait: float = 0.0
    ) -> T:
        """Run `fn` on this BMC's thread under a deadline; any failure drops the session.

        A poll finding the thread busy fails at once (the next poll comes soon); an action
        (`wait` > 0) waits that long for the request in flight, since a shutdown step must not
        fail because a sensor poll happened to be running.
        """
        busy = self._busy
        if busy is not None and not busy.done():
            if wait <= 0:
                raise DeviceTimeout(f"{self.where}: still busy with an earlier request ({doing})")
            try:
                async with asyncio.timeout(wait):
                    await asyncio.shield(asyncio.wrap_future(busy))
            except TimeoutError:
                raise DeviceTimeout(
                    f"{self.where}: still busy with an earlier request after {wait:g} s ({doing})"
                ) from None
            except Exception:
                pass  # the earlier request failed on its own; this one may still succeed
        bmc = self._bmc
        limit = self.cfg.poll_timeout if timeout is None else timeout

        def guarded() -> T:
            _CALL.deadline = time.monotonic() + limit
            try:
                return fn()
            except _Expired:
                bmc.forget()
                raise DeviceTimeout(
                    f"{bmc.where}: no answer within {limit:g} s ({doing})"
                ) from None
            except DeviceError:
                bmc.drop()
                raise
            except Exception as exc:
                bmc.drop()
                raise bmc.translate(exc, doing) from None
            finally:
                _CALL.deadline = None

        fut = self._pool.submit(guarded)
        self._busy = fut
        try:
            # The thread itself gives up at `limit` (every wait in it is bounded); this is the
            # backstop should it still be running CPU-bound code.
            async with asyncio.timeout(limit + CALL_MARGIN):
                return await asyncio.wrap_future(fut)
        except TimeoutError:
            fut.add_done_callback(lambda _f: bmc.forget())
            raise DeviceTimeout(f"{self.where}: no answer within {limit:g} s ({doing})") from None

    async def poll(self) -> Sample:
        bmc = self._bmc
        read_sel = self.cfg.read_sel

        def read() -> tuple[str, list[SensorValue], list[SelRecord], dict[int, str]]:
            power = bmc.power_state()
            sensors = bmc.sensors()
            sel = bmc.new_sel() if read_sel else []
            return power, sensors, sel, dict(bmc.sensor_names)

        power, sensors, sel, names = await self._call(read, "reading sensors")
        summary = summarize(sensors, power == "on", self.cfg.power_sensor)
        metrics = summary.metrics
        flags = list(summary.flags)
        described = []
        for rec in sel:
            kind = sel_kind(rec)
            if kind is None:
                continue
            flag, text = SEL_KINDS[kind]
            if flag not in flags:
                flags.append(flag)
            sensor = names.get(rec.sensor_number, f"sensor {rec.sensor_number}")
            described.append(f"{text} on {sensor}, SEL #{rec.record_id}")
        if described:
            metrics["sel.last"] = "; ".join(described)
        return Sample(
            device=self.cfg.id,
            ts=utcnow(),
            status=tuple(flags),
            metrics=metrics,
            unknown=summary.unknown,
        )

    # ---- actions ------------------------------------------------------------------------

    async def actions(self) -> list[str]:
        return list(POWER_ACTIONS)

    async def power_state(self) -> str:
        return await self._call(
            self._bmc.power_state, "reading the power state", 10.0, wait=ACTION_WAIT
        )

    async def run_action(self, action: str, params: Mapping[str, str] | None = None) -> str:
        """Power `power_on`, `soft_off`, `hard_off` (= `power_off`) or `power_cycle`, verified.

        Params: `timeout` (seconds to reach the state, default `action_timeout`); for soft_off
        `fallback: hard_off` to cut the power when the OS has not shut down by then.
        """
        cfg = self.cfg
        cfg.require_writes()
        if action not in POWER_ACTIONS:
            raise ActionError(f"device {cfg.id}: unknown action {action!r}")
        params = dict(params or {})
        try:
            deadline_s = float(params.get("timeout", cfg.action_timeout))
        except ValueError:
            raise ActionError(
                f"device {cfg.id}: timeout {params['timeout']!r} is not a number"
            ) from None
        fallback = params.get("fallback")
        if fallback not in (None, "", "none", "hard_off"):
            raise ActionError(f"device {cfg.id}: fallback must be 'hard_off' or 'none'")
        async with self._action_lock:
            started = time.monotonic()
            if action == "power_cycle":
                return await self._cycle(deadline_s, started)
            if await self.power_state() == POWER_ACTIONS[action]:
                return f"{self.where} already {POWER_ACTIONS[action]}; nothing sent"
            await self._call(
                lambda: self._bmc.set_power(_PYGHMI_POWER[action]), action, 10.0, wait=ACTION_WAIT
            )
            if await self._wait_state(POWER_ACTIONS[action], deadline_s):
                took = time.monotonic() - started
                return f"{action}: {self.where} is {POWER_ACTIONS[action]} after {took:.1f} s"
            if action == "soft_off" and fallback == "hard_off":
                await self._call(
                    lambda: self._bmc.set_power("off"), "hard_off", 10.0, wait=ACTION_WAIT
                )
                if await self._wait_state("off", 30.0):
                    return (
                        f"soft_off: the OS did not shut down within {deadline_s:g} s; "
                        f"hard_off: {self.where} is off after {time.monotonic() - started:.1f} s"
                    )
            raise ActionError(
                f"device {cfg.id}: {action} sent, but {self.where} did not reach "
                f"'{POWER_ACTIONS[action]}' within {deadline_s:g} s"
            )

    async def _cycle(self, deadline_s: float, started: float) -> str:
        """Off (hard) then on; a server that is off is simply turned on."""
        if await self.power_state() == "on":
            await self._call(
                lambda: self._bmc.set_power("off"), "power_cycle", 10.0, wait=ACTION_WAIT
            )
            if not await self._wait_state("off", deadline_s):
                raise ActionError(f"device {self.cfg.id}: {self.where} did not turn off")
        await self._call(lambda: self._bmc.set_power("on"), "power_cycle", 10.0, wait=ACTION_WAIT)
        if not await self._wait_state("on", deadline_s):
            raise ActionError(f"device {self.cfg.id}: {self.where} did not turn back on")
        return f"power_cycle: {self.where} is on again after {time.monotonic() - started:.1f} s"

    async def _wait_state(self, wanted: str, within: float) -> bool:
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(DeviceTimeout):
                if await self.power_state() == wanted:
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.verify_every)

    async def close(self) -> None:
        bmc = self._bmc
        if self._busy is None or self._busy.done():

            def logout() -> None:
                _CALL.deadline = time.monotonic() + 2.0
                try:
                    bmc.drop()
                finally:
                    _CALL.deadline = None

            with contextlib.suppress(Exception):
                async with asyncio.timeout(3.0):
                    await asyncio.wrap_future(self._pool.submit(logout))
        self._pool.shutdown(wait=False, cancel_futures=True)
