"""The SNMP trap and inform listener: a notification becomes an event at once, and the device that
sent it is polled at once to confirm.

A trap says "something happened" in milliseconds, a poll says what the device's state is now;
the agent uses both: the trap's event goes out immediately (type `trap.*`, see docs/events.md),
and the poll that follows raises the usual state events (`power.on_battery` ...) from facts.

pysnmp receives v1 and v2c traps (community checked), v2c informs (acknowledged) and v3 traps
and informs (USM users; a v3 *trap* also needs the sender's engine id, an inform does not).
What each notification OID means comes from the SNMP profiles' `traps:` sections, so a vendor's
traps are data like its OIDs. A source that sends more than `rate` notifications per second
(after a `burst`) is throttled: the excess is dropped and counted, and one `trap.flood` event per
source and minute says so.

The listener is supervised (supervise.py): a watch task re-opens the socket should it ever be
closed under the listener, and a notification whose handling raises is logged and counted
(`stats.failed`) instead of vanishing inside pysnmp.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from facility_agent.core.driver import SiteHooks, SiteService
from facility_agent.core.model import Event, Severity
from facility_agent.drivers.snmp.traps_config import TrapsConfig
from facility_agent.runtime.supervise import Supervisor

log = logging.getLogger(__name__)

SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
#: RFC 3584: the original agent's address, added when a proxy forwards a v1 trap.
SNMP_TRAP_ADDRESS = (1, 3, 6, 1, 6, 3, 18, 1, 3, 0)
#: Varbinds copied into an event's data, and their text length, at most.
MAX_VARBINDS = 16
MAX_VALUE_TEXT = 200
#: How often the watch task checks that the listener's socket is still open.
WATCH_EVERY = 1.0

_AUTH = {
    "MD5": "usmHMACMD5AuthProtocol",
    "SHA": "usmHMACSHAAuthProtocol",
    "SHA224": "usmHMAC128SHA224AuthProtocol",
    "SHA256": "usmHMAC192SHA256AuthProtocol",
    "SHA384": "usmHMAC256SHA384AuthProtocol",
    "SHA512": "usmHMAC384SHA512AuthProtocol",
}
_PRIV = {
    "DES": "usmDESPrivProtocol",
    "3DES": "usm3DESEDEPrivProtocol",
    "AES": "usmAesCfb128Protocol",
    "AES128": "usmAesCfb128Protocol",
    "AES192": "usmAesCfb192Protocol",
    "AES256": "usmAesCfb256Protocol",
}


@dataclass(frozen=True)
class TrapMeaning:
    name: str
    event: str
    severity: Severity
    message: str
    #: Profiles that define it: a device polled through one of them can have sent it.
    profiles: frozenset[str]


def trap_catalogue(extra_profiles: Iterable[str] = ()) -> dict[tuple[int, ...], TrapMeaning]:
    """Notification OID -> meaning, from every bundled SNMP profile plus `extra_profiles`."""
    from facility_agent.drivers.snmp.profile import bundled_names, load_profile

    out: dict[tuple[int, ...], TrapMeaning] = {}
    for ref in [*bundled_names(), *extra_profiles]:
        profile = load_profile(ref)
        for trap in profile.traps:
            oid = profile.resolve(trap.oid)
            known = out.get(oid)
            names = (known.profiles if known else frozenset()) | {ref}
            out[oid] = TrapMeaning(
                trap.name, trap.event, Severity(trap.severity), trap.message, names
            )
    return out


@dataclass
class TrapStats:
    received: int = 0
    #: Dropped by the flood limit.
    dropped: int = 0
    #: From an address no configured device has.
    unknown_source: int = 0
    #: With a notification OID no profile defines.
    unknown_trap: int = 0
    #: Whose handling raised (logged with its traceback the first time).
    failed: int = 0
    #: Datagrams pyasn1 failed on with something other than its own error (see start()).
    malformed: int = 0


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    dropped: int = 0
    last_notice: float = -1e9


@dataclass(frozen=True)
class SnmpDevice:
    """What the listener needs to know of a device that may send traps."""

    id: str
    host: str
    profile: str


@dataclass
class TrapListener(SiteService):
    """Listens on `config.listen`; calls `emit(event)` and `poll_now(device)` per notification."""

    config: TrapsConfig
    site: str
    devices: list[SnmpDevice]
    emit: Callable[[Event], None]
    poll_now: Callable[[str], None]
    stats: TrapStats = field(default_factory=TrapStats)
    port: int = 0
    #: Runs the listener's task supervised (the agent's supervisor; a private one by default).
    spawn: Callable[[str, Callable[[], Any]], asyncio.Task[None]] = field(
        default_factory=lambda: Supervisor().spawn
    )

    def __post_init__(self) -> None:
        self._engine: Any = None
        self._sock: socket.socket | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._by_ip: dict[str, list[SnmpDevice]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._catalogue = trap_catalogue(self.config.profiles)

    async def start(self) -> None:
        """Resolve device addresses and bind; raises OSError when the port cannot be bound."""
        self._by_ip = await self._resolve()
        self._open()
        self._watch_task = self.spawn("traps", self._watch)

    def _open(self) -> None:
        from pysnmp.carrier.asyncio.dgram import udp, udp6
        from pysnmp.entity import config as ecfg
        from pysnmp.entity import engine
        from pysnmp.entity.rfc3413 import ntfrcv
        from pysnmp.hlapi.v3arch import asyncio as h

        host, port = self.config.address
        # Bind here, not in pysnmp: it binds later in a task, where a refused port (162
        # without privilege, or in use) would only be logged, never raised to the caller.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # Once bound, the same port again (it may have been `:0`) when re-opened.
            sock.bind((host, self.port or port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        eng = engine.SnmpEngine()
        module = udp6 if family == socket.AF_INET6 else udp
        transport = module.Udp6Transport() if module is udp6 else udp.UdpTransport()
        ecfg.add_transport(eng, module.DOMAIN_NAME, transport.open_server_mode(sock=sock))
        ecfg.add_v1_system(eng, "facility-traps", self.config.community.get_secret_value())
        for user in self.config.users:
            kw: dict[str, Any] = {}
            if user.auth_protocol and user.auth_key:
                kw["authProtocol"] = getattr(h, _AUTH[user.auth_protocol])
                kw["authKey"] = user.auth_key.get_secret_value()
            if user.priv_protocol and user.priv_key:
                kw["privProtocol"] = getattr(h, _PRIV[user.priv_protocol])
                kw["privKey"] = user.priv_key.get_secret_value()
            if user.engine_id:
                kw["securityEngineId"] = h.OctetString(hexValue=user.engine_id)
            ecfg.add_v3_user(eng, user.user, **kw)
        ntfrcv.NotificationReceiver(eng, self._received)
        self._guard(eng.message_dispatcher)
        eng.transport_dispatcher.job_started(1)
        self._engine = eng
        log.info("SNMP trap listener on %s:%d", host, self.port)

    def _guard(self, dispatcher: Any) -> None:
        """pysnmp drops a datagram pyasn1 rejects with PyAsn1Error, but pyasn1 also fails with
        OverflowError or IndexError on some malformed BER (found by bench/fuzz.py); those went
        up to asyncio as a traceback per datagram. Any such datagram is dropped and counted."""
        inner = dispatcher.receive_message

        def receive(*args: Any) -> Any:
            try:
                return inner(*args)
            except Exception:
                self.stats.malformed += 1
                log.debug("traps: undecodable datagram dropped", exc_info=True)
                return b""

        dispatcher.receive_message = receive

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None
        self._close_engine()

    def _close_engine(self) -> None:
        if self._engine is not None:
            eng, self._engine = self._engine, None
            with contextlib.suppress(Exception):
                eng.transport_dispatcher.job_finished(1)
                eng.close_dispatcher()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _watch(self) -> None:
        """Listen again should the socket be closed under the listener; a port that cannot be
        bound again raises, and the supervisor retries with back-off (the task shows down)."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if self._sock is not None and self._sock.fileno() != -1:
                continue
            log.error("the SNMP trap listener's socket is closed; listening again")
            self._close_engine()
            self._open()

    async def _resolve(self) -> dict[str, list[SnmpDevice]]:
        loop = asyncio.get_running_loop()
        out: dict[str, list[SnmpDevice]] = {}
        for dev in self.devices:
            try:
                infos = await loop.getaddrinfo(dev.host, None, type=socket.SOCK_DGRAM)
            except OSError as exc:
                log.warning("traps: cannot resolve %s of device %s: %s", dev.host, dev.id, exc)
                continue
            for info in infos:
                ip = _norm(str(info[4][0]))
                if dev not in out.setdefault(ip, []):
                    out[ip].append(dev)
        return out

    # ---- one notification ---------------------------------------------------------------

    def _received(
        self,
        snmp_engine: Any,
        state_ref: Any,
        ctx_engine: Any,
        ctx_name: Any,
        varbinds: Any,
        cb: Any,
    ) -> None:
        try:
            ctx = snmp_engine.observer.get_execution_context("rfc3412.receiveMessage:request")
            source = _norm(str(ctx["transportAddress"][0]))
            pairs = [(tuple(name), value) for name, value in varbinds]
        except Exception:
            log.debug("traps: unreadable notification", exc_info=True)
            return
        try:
            self.handle(source, pairs)
        except Exception:
            self.stats.failed += 1
            level = logging.ERROR if self.stats.failed == 1 else logging.DEBUG
            log.log(level, "traps: handling a notification from %s failed", source, exc_info=True)

    def allow(self, source: str, now: float | None = None) -> bool:
        """Token bucket per source: `rate` per second after a `burst`."""
        now = time.monotonic() if now is None else now
        cfg = self.config
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = _Bucket(float(cfg.burst), now)
        bucket.tokens = min(float(cfg.burst), bucket.tokens + (now - bucket.stamp) * cfg.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        bucket.dropped += 1
        self.stats.dropped += 1
        if now - bucket.last_notice >= 60.0:
            bucket.last_notice = now
            self.emit(
                Event(
                    self.site,
                    self._devices_at(source)[0].id if self._devices_at(source) else "traps",
                    "trap.flood",
                    Severity.WARNING,
                    f"{source} sends more than {cfg.rate:g} traps/s: dropping the excess "
                    f"({bucket.dropped} dropped so far)",
                    data={"source": source, "dropped": bucket.dropped},
                )
            )
        return False

    def _devices_at(self, source: str) -> list[SnmpDevice]:
        return self._by_ip.get(source, [])

    def handle(self, source: str, varbinds: list[tuple[tuple[int, ...], Any]]) -> None:
        """Turn one notification into an event and immediate polls (public for tests)."""
        self.stats.received += 1
        if not self.allow(source):
            return
        values = dict(varbinds)
        trap_oid = values.get(SNMP_TRAP_OID)
        oid: tuple[int, ...] = tuple(trap_oid) if trap_oid is not None else ()
        origin = values.get(SNMP_TRAP_ADDRESS)
        if origin is not None:
            with contextlib.suppress(Exception):
                source = _norm(str(ipaddress.ip_address(bytes(origin.asOctets()))))
        candidates = self._devices_at(source)
        meaning = self._catalogue.get(oid)
        if meaning is not None:
            fitting = [d for d in candidates if d.profile in meaning.profiles]
            candidates = fitting or candidates
        else:
            self.stats.unknown_trap += 1
        if not candidates:
            self.stats.unknown_source += 1
        oid_text = ".".join(map(str, oid)) or "?"
        device = candidates[0].id if candidates else "traps"
        if meaning is not None:
            kind, severity, text = meaning.event, meaning.severity, meaning.message
            name = meaning.name
        else:
            kind, severity, text, name = "trap.received", Severity.INFO, "notification", oid_text
        where = device if candidates else f"unknown sender {source}"
        data: dict[str, Any] = {
            "source": source,
            "trap": name,
            "oid": oid_text,
            "varbinds": _describe(varbinds),
        }
        if len(candidates) > 1:
            data["devices"] = [d.id for d in candidates]
        self.emit(
            Event(self.site, device, kind, severity, f"{where}: {text} (trap {name})", data=data)
        )
        for dev in candidates:
            self.poll_now(dev.id)


def _norm(ip: str) -> str:
    """IPv4-mapped IPv6 (`::ffff:10.0.0.5`) as plain IPv4."""
    with contextlib.suppress(ValueError):
        addr = ipaddress.ip_address(ip.split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            return str(addr.ipv4_mapped)
        return str(addr)
    return ip


def _describe(varbinds: list[tuple[tuple[int, ...], Any]]) -> Mapping[str, str]:
    out: dict[str, str] = {}
    for name, value in varbinds[:MAX_VARBINDS]:
        if name in (SNMP_TRAP_OID,):
            continue
        try:
            text = value.prettyPrint()
        except Exception:
            text = repr(value)
        out[".".join(map(str, name))] = str(text)[:MAX_VALUE_TEXT]
    return out


async def start_listener(config: TrapsConfig, hooks: SiteHooks) -> TrapListener | None:
    """The listener for the site's SNMP devices, started; None (logged) when it cannot bind."""
    devices = [
        SnmpDevice(d.id, str(getattr(d, "host", "")), str(getattr(d, "profile", "")))
        for d in hooks.devices
        if d.driver == "snmp" and getattr(d, "host", None)
    ]
    listener = TrapListener(
        config, hooks.site, devices, hooks.emit, hooks.poll_now, spawn=hooks.spawn
    )
    try:
        await listener.start()
    except Exception as exc:
        log.error(
            "SNMP trap listener cannot listen on %s: %s (port 162 needs privilege: "
            "see docs/snmp.md); polling goes on without traps",
            config.listen,
            exc,
        )
        return None
    return listener
