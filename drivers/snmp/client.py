"""SNMP transports for the driver: a fast v1/v2c client of our own, and SNMPv3 through pysnmp.

Both offer the same requests (GET, GETNEXT, GETBULK, and SET for device actions) returning
`(oid, (tag, value))` varbinds, so table walking and profile logic above them do not care which
one is used.

* `FastClient` (v1/v2c): one connected UDP socket per device, requests matched by request-id,
  our BER codec (snmp_ber.py). Per-request timeout and retries belong to the device, so a slow
  agent only costs its own poll. An agent drops requests with an unknown community without a
  word, so a timeout is reported as "down, or wrong community".
* `UsmClient` (v3): pysnmp's asyncio hlapi with one SnmpEngine per event loop (engine and target
  reuse, `lookupMib=False`), which handles engine discovery, USM authentication and privacy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import weakref
from abc import ABC, abstractmethod
from typing import Any, cast

from facility_agent.core.driver import AuthError, DeviceError, DeviceTimeout, ProtocolError
from facility_agent.drivers.snmp import wire as ber
from facility_agent.drivers.snmp.wire import Oid, Value, VarBind

#: Largest datagram accepted; SNMP over UDP is bounded by 65507 anyway.
MAX_DATAGRAM = 65535


class SnmpClient(ABC):
    """One device's SNMP session."""

    where: str
    #: v1 has no GETBULK: walks fall back to GETNEXT.
    bulk: bool = True

    @abstractmethod
    async def get(self, oids: list[Oid]) -> list[VarBind]: ...

    @abstractmethod
    async def get_next(self, oids: list[Oid]) -> list[VarBind]: ...

    @abstractmethod
    async def get_bulk(self, oids: list[Oid], max_repetitions: int) -> list[VarBind]: ...

    @abstractmethod
    async def set(self, varbinds: list[VarBind]) -> list[VarBind]:
        """One SetRequest with all `varbinds` (the agent applies all or none, RFC 3416)."""

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release the socket."""


class _Udp(asyncio.DatagramProtocol):
    """Demultiplexes responses to waiting requests by request-id; drops everything else."""

    def __init__(self, community: bytes) -> None:
        self.community = community
        self.waiting: dict[int, asyncio.Future[ber.Response]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        rid = ber.peek_request_id(data)
        fut = self.waiting.get(rid) if rid is not None else None
        if fut is None or fut.done():
            self.dropped += 1
            return
        try:
            fut.set_result(ber.decode_response(data, self.community))
        except ber.BerError as exc:
            fut.set_exception(ProtocolError(str(exc)))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on a connected socket: nobody listens there.
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(exc or ConnectionResetError("socket closed"))


class FastClient(SnmpClient):
    """SNMP v1 or v2c over one connected UDP socket."""

    def __init__(
        self,
        host: str,
        port: int,
        community: str,
        version: int,
        timeout: float,
        retries: int,
    ) -> None:
        self.host, self.port = host, port
        self.where = f"{host}:{port}"
        self._community = community.encode()
        self.version = version
        self.bulk = version == 1
        self.timeout = timeout
        self.retries = retries
        self._proto: _Udp | None = None
        self._ids = itertools.count(random.randrange(1, 1 << 30))
        self._lock = asyncio.Lock()

    async def _endpoint(self) -> _Udp:
        async with self._lock:
            if self._proto is None or self._proto.transport is None:
                loop = asyncio.get_running_loop()
                try:
                    _, proto = await loop.create_datagram_endpoint(
                        lambda: _Udp(self._community), remote_addr=(self.host, self.port)
                    )
                except OSError as exc:
                    raise DeviceError(
                        f"SNMP agent {self.where}: cannot open a socket: {exc.strerror or exc}"
                    ) from None
                self._proto = proto
            return self._proto

    async def _request(
        self, pdu: int, oids: list[Oid], max_rep: int = 0, values: list[Value] | None = None
    ) -> ber.Response:
        proto = await self._endpoint()
        loop = asyncio.get_running_loop()
        for _attempt in range(self.retries + 1):
            rid = next(self._ids) & 0x7FFFFFFF
            if values is not None:  # a SET: the varbinds carry the new values
                vbs = b"".join(ber.enc_varbind(o, v) for o, v in zip(oids, values, strict=True))
                data = ber.encode_message(self.version, self._community, pdu, rid, 0, 0, vbs)
            else:
                data = ber.encode_request(self.version, self._community, pdu, rid, oids, 0, max_rep)
            fut: asyncio.Future[ber.Response] = loop.create_future()
            proto.waiting[rid] = fut
            try:
                assert proto.transport is not None
                proto.transport.sendto(data)
                async with asyncio.timeout(self.timeout):
                    return await fut
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                raise DeviceError(
                    f"SNMP agent {self.where}: port unreachable (no agent listening)"
                ) from None
            except OSError as exc:
                raise DeviceError(f"SNMP agent {self.where}: {exc.strerror or exc}") from None
            except ProtocolError as exc:
                raise ProtocolError(f"SNMP agent {self.where}: malformed reply: {exc}") from None
            finally:
                proto.waiting.pop(rid, None)
        tries = self.retries + 1
        raise DeviceTimeout(
            f"SNMP agent {self.where}: no answer to {tries} request{'s' if tries > 1 else ''} "
            f"of {self.timeout:g} s: the agent is down or unreachable, or the community is "
            "wrong (agents drop requests with an unknown community without answering)"
        )

    def _check(self, resp: ber.Response, oids: list[Oid]) -> list[VarBind]:
        if resp.error_status:
            name = (
                ber.ERROR_NAMES[resp.error_status]
                if resp.error_status < len(ber.ERROR_NAMES)
                else str(resp.error_status)
            )
            raise _ErrorStatus(resp.error_status, resp.error_index, name)
        return resp.varbinds

    async def get(self, oids: list[Oid]) -> list[VarBind]:
        return await self._with_v1_fixups(ber.GET, oids)

    async def get_next(self, oids: list[Oid]) -> list[VarBind]:
        return await self._with_v1_fixups(ber.GETNEXT, oids)

    async def get_bulk(self, oids: list[Oid], max_repetitions: int) -> list[VarBind]:
        if self.version == 0:
            return await self.get_next(oids)
        resp = await self._request(ber.GETBULK, oids, max_repetitions)
        return self._check(resp, oids)

    async def set(self, varbinds: list[VarBind]) -> list[VarBind]:
        # A retried SET is harmless for the outlet commands profiles send (the same state again).
        oids = [oid for oid, _ in varbinds]
        resp = await self._request(ber.SET, oids, values=[v for _, v in varbinds])
        return self._check(resp, oids)

    async def _with_v1_fixups(self, pdu: int, oids: list[Oid]) -> list[VarBind]:
        """v1 answers a missing object with noSuchName for the whole request: drop the culprit,
        ask again, and report it as v2's noSuchObject (or endOfMibView for GETNEXT)."""
        pending = list(oids)
        missing: dict[Oid, int] = {}
        for _ in range(len(oids) + 1):
            if not pending:
                break
            resp = await self._request(pdu, pending)
            try:
                got = self._check(resp, pending)
            except _ErrorStatus as exc:
                if exc.status == 2 and 1 <= exc.index <= len(pending):
                    culprit = pending.pop(exc.index - 1)
                    missing[culprit] = ber.NO_SUCH_OBJECT if pdu == ber.GET else ber.END_OF_MIB_VIEW
                    continue
                raise
            by_req = dict(zip(pending, got, strict=False))
            out: list[VarBind] = []
            for oid in oids:
                if oid in missing:
                    out.append((oid, (missing[oid], None)))
                elif oid in by_req:
                    out.append(by_req[oid])
            return out
        return [(oid, (missing.get(oid, ber.NO_SUCH_OBJECT), None)) for oid in oids]

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


class _ErrorStatus(ProtocolError):
    """A response with a non-zero error-status (tooBig, noSuchName, genErr ...)."""

    def __init__(self, status: int, index: int, name: str) -> None:
        super().__init__(f"agent answered {name} (error-index {index})")
        self.status = status
        self.index = index


# ---- SNMPv3 through pysnmp ------------------------------------------------------------------

AUTH_PROTOCOLS = ("MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512")
PRIV_PROTOCOLS = ("DES", "3DES", "AES", "AES128", "AES192", "AES256")

#: pysnmp's error indications meaning "the agent refused who we are".
_AUTH_INDICATIONS = (
    "unknownusername",
    "wrongdigest",
    "decryptionerror",
    "unsupportedseclevel",
    "unsupportedsecuritylevel",
    "authenticationfailure",
    "notintimewindow",
)

_ENGINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def _engine() -> Any:
    """One pysnmp engine per event loop: building one costs far more than a request."""
    from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

    loop = asyncio.get_running_loop()
    eng = _ENGINES.get(loop)
    if eng is None:
        eng = _ENGINES[loop] = SnmpEngine()
    return eng


def _tag_of(value: Any) -> ber.Value:
    """A pysnmp value as our `(tag, python value)`."""
    from pysnmp.proto import rfc1902, rfc1905

    if isinstance(value, rfc1905.NoSuchObject):
        return ber.NO_SUCH_OBJECT, None
    if isinstance(value, rfc1905.NoSuchInstance):
        return ber.NO_SUCH_INSTANCE, None
    if isinstance(value, rfc1905.EndOfMibView):
        return ber.END_OF_MIB_VIEW, None
    for cls, tag in (
        (rfc1902.Counter64, ber.COUNTER64),
        (rfc1902.Counter32, ber.COUNTER32),
        (rfc1902.TimeTicks, ber.TIMETICKS),
        (rfc1902.Gauge32, ber.GAUGE32),
        (rfc1902.Unsigned32, ber.GAUGE32),
        (rfc1902.Integer32, ber.INTEGER),
        (rfc1902.Integer, ber.INTEGER),
    ):
        if isinstance(value, cls):
            return tag, int(value)
    if isinstance(value, rfc1902.IpAddress):
        return ber.IP_ADDRESS, bytes(value.asOctets())
    if isinstance(value, rfc1902.Opaque):
        return ber.OPAQUE, bytes(value.asOctets())
    if isinstance(value, rfc1902.OctetString):
        return ber.OCTET_STRING, bytes(value.asOctets())
    if isinstance(value, rfc1902.ObjectIdentifier):
        return ber.OBJECT_ID, tuple(value)
    return ber.NULL, None


def _pysnmp_value(value: ber.Value) -> Any:
    """Our `(tag, python value)` as the pysnmp object a SET carries."""
    from pysnmp.proto import rfc1902

    tag, raw = value
    kinds: dict[int, Any] = {
        ber.INTEGER: rfc1902.Integer32,
        ber.GAUGE32: rfc1902.Gauge32,
        ber.COUNTER32: rfc1902.Counter32,
        ber.TIMETICKS: rfc1902.TimeTicks,
        ber.OCTET_STRING: rfc1902.OctetString,
    }
    if tag not in kinds:
        raise ValueError(f"cannot SET a value of tag 0x{tag:02x}")
    return kinds[tag](raw)


class UsmClient(SnmpClient):
    """SNMPv3 (noAuthNoPriv, authNoPriv, authPriv) through pysnmp."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        auth_protocol: str | None,
        auth_key: str | None,
        priv_protocol: str | None,
        priv_key: str | None,
        timeout: float,
        retries: int,
        context: str = "",
    ) -> None:
        self.host, self.port = host, port
        self.where = f"{host}:{port}"
        self.user = user
        self._auth = (auth_protocol, auth_key)
        self._priv = (priv_protocol, priv_key)
        self.timeout = timeout
        self.retries = retries
        self.context = context
        self._target: Any = None
        self._usm: Any = None

    def _user_data(self) -> Any:
        from pysnmp.hlapi.v3arch import asyncio as h

        auth_map = {
            "MD5": h.usmHMACMD5AuthProtocol,
            "SHA": h.usmHMACSHAAuthProtocol,
            "SHA224": h.usmHMAC128SHA224AuthProtocol,
            "SHA256": h.usmHMAC192SHA256AuthProtocol,
            "SHA384": h.usmHMAC256SHA384AuthProtocol,
            "SHA512": h.usmHMAC384SHA512AuthProtocol,
        }
        priv_map = {
            "DES": h.usmDESPrivProtocol,
            "3DES": h.usm3DESEDEPrivProtocol,
            "AES": h.usmAesCfb128Protocol,
            "AES128": h.usmAesCfb128Protocol,
            "AES192": h.usmAesCfb192Protocol,
            "AES256": h.usmAesCfb256Protocol,
        }
        auth_p, auth_k = self._auth
        priv_p, priv_k = self._priv
        kw: dict[str, Any] = {}
        if auth_p and auth_k:
            kw["authKey"] = auth_k
            kw["authProtocol"] = auth_map[auth_p]
        if priv_p and priv_k:
            kw["privKey"] = priv_k
            kw["privProtocol"] = priv_map[priv_p]
        return h.UsmUserData(self.user, **kw)

    async def _prepare(self) -> tuple[Any, Any, Any]:
        from pysnmp.hlapi.v3arch import asyncio as h

        if self._target is None:
            try:
                self._target = await h.UdpTransportTarget.create(
                    (self.host, self.port), timeout=self.timeout, retries=self.retries
                )
            except Exception as exc:
                raise DeviceError(f"SNMP agent {self.where}: cannot resolve: {exc}") from None
            self._usm = self._user_data()
        return _engine(), self._usm, self._target

    def _raise(self, indication: Any, status: Any, index: Any) -> None:
        if indication:
            text = str(indication)
            key = type(indication).__name__.lower() + " " + text.replace(" ", "").lower()
            if any(k in key for k in _AUTH_INDICATIONS):
                raise AuthError(
                    f"SNMP agent {self.where}: refused SNMPv3 user {self.user!r}: {text} "
                    "(unknown user, wrong auth or priv key, or wrong protocols)"
                )
            if "timedout" in key or "timeout" in key:
                raise DeviceTimeout(
                    f"SNMP agent {self.where}: no answer to SNMPv3 request within "
                    f"{self.timeout:g} s x {self.retries + 1}"
                )
            raise DeviceError(f"SNMP agent {self.where}: {text}")
        if status and int(status):
            code = int(status)
            name = ber.ERROR_NAMES[code] if code < len(ber.ERROR_NAMES) else str(code)
            if code == 16:
                raise AuthError(f"SNMP agent {self.where}: {name} for user {self.user!r}")
            raise _ErrorStatus(code, int(index or 0), name)

    async def _run(self, kind: str, oids: list[Oid], max_rep: int = 0) -> list[VarBind]:
        from pysnmp.hlapi.v3arch import asyncio as h

        eng, usm, target = await self._prepare()
        objs = [h.ObjectType(h.ObjectIdentity(oid)) for oid in oids]
        ctx = h.ContextData(contextName=self.context)
        if kind == "get":
            res = await h.get_cmd(eng, usm, target, ctx, *objs, lookupMib=False)
        elif kind == "next":
            res = await h.next_cmd(eng, usm, target, ctx, *objs, lookupMib=False)
        else:
            res = await h.bulk_cmd(eng, usm, target, ctx, 0, max_rep, *objs, lookupMib=False)
        indication, status, index, vbs = res
        self._raise(indication, status, index)
        return [(tuple(name), _tag_of(value)) for name, value in vbs]

    async def get(self, oids: list[Oid]) -> list[VarBind]:
        return await self._run("get", oids)

    async def set(self, varbinds: list[VarBind]) -> list[VarBind]:
        from pysnmp.hlapi.v3arch import asyncio as h

        eng, usm, target = await self._prepare()
        objs = [h.ObjectType(h.ObjectIdentity(oid), _pysnmp_value(v)) for oid, v in varbinds]
        ctx = h.ContextData(contextName=self.context)
        res = await h.set_cmd(eng, usm, target, ctx, *objs, lookupMib=False)
        indication, status, index, vbs = res
        self._raise(indication, status, index)
        return [(tuple(name), _tag_of(value)) for name, value in vbs]

    async def get_next(self, oids: list[Oid]) -> list[VarBind]:
        return await self._run("next", oids)

    async def get_bulk(self, oids: list[Oid], max_repetitions: int) -> list[VarBind]:
        return await self._run("bulk", oids, max_repetitions)

    async def close(self) -> None:
        if self._target is not None:
            with contextlib.suppress(Exception):
                self._target.close()
        self._target = None
