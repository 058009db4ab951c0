"""A small asyncio client for NUT's upsd, one persistent connection, one request at a time.

Our own rather than a library's (see the README): the stock clients are synchronous, built on the
removed telnetlib, return partial buffers on timeout, or retry behind our back, and all of them
stall at ~22 `LIST VAR`/s because upsd writes one line per write(): Nagle holds each next line
until the client's delayed ACK (~40 ms). Re-arming TCP_QUICKACK after every chunk read makes the
kernel ACK at once, which lifts that to thousands per second.

Failure rules: a request that times out, is cancelled, or meets anything but a well-formed reply
leaves the stream in an unknown state, so the connection is dropped and the next request opens
a new one; an `ERR` reply is a clean answer and keeps the connection. Errors name the server as
host:port and never contain the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from facility_agent.core.driver import AuthError, DeviceError, DeviceTimeout, ProtocolError
from facility_agent.drivers.nut import protocol as proto

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 3493
#: Longest reply line accepted; upsd's own limit is far lower, so more means a broken peer.
MAX_LINE = 64 * 1024
#: Most lines accepted in one LIST reply (a big UPS has a few hundred variables).
MAX_LIST_LINES = 10_000

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class _Refused(Exception):
    """A well-formed `ERR` reply: carries the mapped error; the connection is still in sync."""

    def __init__(self, error: DeviceError) -> None:
        super().__init__(error.reason)
        self.error = error


class _LineProtocol(asyncio.Protocol):
    """Buffers the byte stream into lines and re-arms TCP_QUICKACK after every chunk received.

    The re-arm must happen after each read: the kernel drops out of quick-ACK mode on its own,
    and setting the option once (or TCP_NODELAY on our side) does not help against upsd.
    """

    def __init__(self, where: str, max_line: int) -> None:
        self._where = where
        self._max_line = max_line
        self._buf = bytearray()
        self._eof = False
        self._lost: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sock: socket.socket | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._sock = transport.get_extra_info("socket")
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._quickack()

    def _quickack(self) -> None:
        if self._sock is not None and _QUICKACK is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def data_received(self, data: bytes) -> None:
        self._quickack()
        self._buf += data
        if len(self._buf) > self._max_line and b"\n" not in self._buf:
            # Stop reading: the request will fail and the connection be dropped, so an endless
            # line costs at most one more chunk of memory.
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def closed(self) -> bool:
        return self._eof or self.transport is None or self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise DeviceError(f"connection to NUT server {self._where} is closed")
        self.transport.write(data)

    async def readline(self) -> str:
        """The next line without its newline; raises on EOF, or on a line over the limit."""
        while True:
            end = self._buf.find(b"\n")
            if 0 <= end <= self._max_line:
                raw = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if end > self._max_line or len(self._buf) > self._max_line:
                raise ProtocolError(
                    f"NUT server {self._where} sent a line longer than {self._max_line} bytes"
                )
            if self._eof:
                why = f": {self._lost}" if self._lost else ""
                raise DeviceError(f"NUT server {self._where} closed the connection{why}")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


#: A variable name no UPS has, used to test credentials without changing anything.
CREDENTIAL_PROBE_VAR = "facility-agent.credential-check"


class NutClient:
    """One persistent connection to upsd; requests from many tasks are serialized by a lock.

    `login` names a UPS to send `LOGIN` for after authenticating, so upsd counts this client as
    a upsmon secondary of it (needs an account with an `upsmon` role).
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        username: str | None = None,
        password: str | None = None,
        login: str | None = None,
        verify_ups: str | None = None,
        timeout: float = 5.0,
        max_line: int = MAX_LINE,
        max_list_lines: int = MAX_LIST_LINES,
    ) -> None:
        for value in (host, username, password, login):
            if value is not None:
                proto.quote(value)  # refuses CR/LF/NUL before anything is sent
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.login = login
        self.verify_ups = verify_ups
        self.timeout = timeout
        self.max_line = max_line
        self.max_list_lines = max_list_lines
        self._lock = asyncio.Lock()
        self._conn: _LineProtocol | None = None
        self._closed = False

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        user = f" user={self.username!r}" if self.username else ""
        return f"<NutClient {self.where}{user} connected={self.connected}>"

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    # -- public requests ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open and authenticate the connection now (requests also do it when needed)."""
        await self._call("connect", self._noop)

    async def list_ups(self) -> dict[str, str]:
        rows = await self._call("LIST UPS", lambda: self._list(("UPS",), 2))
        return {r[0]: r[1] for r in rows}

    async def list_var(self, ups: str) -> dict[str, str]:
        rows = await self._call(f"LIST VAR {ups}", lambda: self._list(("VAR", ups), 2))
        return {r[0]: r[1] for r in rows}

    async def list_rw(self, ups: str) -> dict[str, str]:
        rows = await self._call(f"LIST RW {ups}", lambda: self._list(("RW", ups), 2))
        return {r[0]: r[1] for r in rows}

    async def list_cmd(self, ups: str) -> list[str]:
        rows = await self._call(f"LIST CMD {ups}", lambda: self._list(("CMD", ups), 1))
        return [r[0] for r in rows]

    async def get_var(self, ups: str, var: str) -> str:
        async def op() -> str:
            words = await self._ask("GET", "VAR", ups, var)
            if words and words[0] == "ERR":
                raise _Refused(proto.error_from_words(words, self.where))
            name, value = proto.parse_var(words, ups, self.where)
            if name != var:
                raise proto.unexpected(words, self.where)
            return value

        return await self._call(f"GET VAR {ups} {var}", op)

    async def instcmd(self, ups: str, cmd: str, value: str | None = None) -> str:
        """Run an instant command; returns what followed `OK` (upsd does not wait for the UPS)."""
        args = ("INSTCMD", ups, cmd) if value is None else ("INSTCMD", ups, cmd, value)
        return await self._call(f"INSTCMD {ups} {cmd}", lambda: self._ok(*args))

    async def set_var(self, ups: str, var: str, value: str) -> str:
        return await self._call(
            f"SET VAR {ups} {var}", lambda: self._ok("SET", "VAR", ups, var, value)
        )

    async def fsd(self, ups: str) -> str:
        """Set forced shutdown on the UPS (needs the FSD action or an upsmon primary account)."""
        return await self._call(f"FSD {ups}", lambda: self._ok("FSD", ups))

    async def logout(self) -> None:
        """Say goodbye politely and drop the connection; the next request reconnects."""
        async with self._lock:
            if self.connected:
                try:
                    async with asyncio.timeout(self.timeout):
                        await self._ask("LOGOUT")
                except (DeviceError, _Refused, TimeoutError):
                    pass
            self._discard()

    async def close(self) -> None:
        """Drop the connection for good; an in-flight request fails with a DeviceError."""
        self._closed = True
        if self._conn is not None and not self._conn.closed and not self._lock.locked():
            with contextlib.suppress(DeviceError):
                self._conn.write(b"LOGOUT\n")
        self._discard()

    # -- machinery ------------------------------------------------------------------------------

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run one request under the lock and the deadline; drop the connection on any doubt."""
        if self._closed:
            raise DeviceError(f"NUT client for {self.where} is closed")
        holding = False
        try:
            async with asyncio.timeout(self.timeout):
                async with self._lock:
                    holding = True
                    try:
                        await self._ensure_connected()
                        return await op()
                    except _Refused as refused:
                        raise refused.error from None
                    except BaseException:
                        self._discard()
                        raise
        except TimeoutError:
            waited = "" if holding else " (still waiting for another request to finish)"
            raise DeviceTimeout(
                f"NUT server {self.where} did not answer {what} within {self.timeout:g} s{waited}"
            ) from None

    async def _noop(self) -> None:
        return None

    async def _connect(self) -> _LineProtocol:
        """A new connection to upsd, not yet authenticated."""
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _LineProtocol(self.where, self.max_line), self.host, self.port
            )
        except OSError as exc:
            raise DeviceError(
                f"cannot connect to NUT server {self.where}: {exc.strerror or exc}"
            ) from None
        return conn

    async def _ensure_connected(self) -> None:
        if self._conn is not None and not self._conn.closed:
            return
        self._discard()
        self._conn = await self._connect()
        log.debug("connected to NUT server %s", self.where)
        try:
            if self.username is not None:
                await self._ok("USERNAME", self.username)
            if self._password is not None:
                await self._ok("PASSWORD", self._password)
            if self.login is not None:
                await self._ok("LOGIN", self.login)
            elif self.verify_ups is not None and self.username is not None:
                await self._verify_credentials(self.verify_ups)
        except _Refused as refused:
            # USERNAME can only be sent once per connection: start afresh next time.
            self._discard()
            raise refused.error from None

    async def _verify_credentials(self, ups: str) -> None:
        """Find out now whether upsd takes our password, not at the first action in an outage.

        upsd answers OK to USERNAME and PASSWORD whatever they are and checks them only when
        they are used. A SET VAR of a variable no UPS has is checked for rights before the
        variable, so it tells a refused account (ACCESS-DENIED) from a good one
        (VAR-NOT-SUPPORTED) without changing anything. An account without SET rights may still
        be a good upsmon account: LOGIN, on a throwaway connection, tells that one.
        """
        reply = await self._ask("SET", "VAR", ups, CREDENTIAL_PROBE_VAR, "0")
        if reply[:2] != ["ERR", "ACCESS-DENIED"]:
            return
        if await self._login_accepted(ups):
            return
        raise _Refused(
            AuthError(
                f"NUT server {self.where} refused user {self.username!r}: wrong password, "
                "or the account has neither SET nor upsmon rights in upsd.users"
            )
        )

    async def _login_accepted(self, ups: str) -> bool:
        probe = await self._connect()
        try:
            for words in (
                ("USERNAME", self.username),
                ("PASSWORD", self._password),
                ("LOGIN", ups),
            ):
                probe.write(proto.format_command(*(w or "" for w in words)))
                reply = proto.split_line(await probe.readline())
                if reply[:1] == ["ERR"]:
                    return False
            probe.write(b"LOGOUT\n")
            return True
        finally:
            probe.abort()

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.abort()
            self._conn = None

    async def _ask(self, *words: str) -> list[str]:
        """Send one command and read its one-line reply, split into words."""
        assert self._conn is not None
        self._conn.write(proto.format_command(*words))
        return proto.split_line(await self._conn.readline())

    async def _ok(self, *words: str) -> str:
        reply = await self._ask(*words)
        if reply and reply[0] == "ERR":
            raise _Refused(proto.error_from_words(reply, self.where))
        return proto.check_ok(reply, self.where)

    async def _list(self, query: Sequence[str], rest: int) -> list[list[str]]:
        """Items of `LIST <query>`, each as the words after the echoed query (`rest` of them)."""
        assert self._conn is not None
        first = await self._ask("LIST", *query)
        if first and first[0] == "ERR":
            raise _Refused(proto.error_from_words(first, self.where))
        if not proto.list_header(first, query):
            raise proto.unexpected(first, self.where)
        n = len(query)
        rows: list[list[str]] = []
        while True:
            try:
                line = await self._conn.readline()
            except DeviceError as exc:
                raise type(exc)(
                    f"{exc.reason} after {len(rows)} lines of LIST {query[0]}"
                ) from None
            words = proto.split_line(line)
            if proto.list_footer(words, query):
                return rows
            if len(words) != n + rest or list(words[:n]) != list(query):
                raise proto.unexpected(words, self.where)
            if len(rows) >= self.max_list_lines:
                raise ProtocolError(
                    f"NUT server {self.where} sent more than {self.max_list_lines} lines "
                    f"for LIST {' '.join(query)}"
                )
            rows.append(words[n:])
