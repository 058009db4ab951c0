"""Reads `!commands` from a route's Matrix room with matrix-nio's asyncio client.

The bot of the route's `matrix://user:password@host/#room` URL logs in once and keeps its
device: the access token and device id are stored (mode 0600) in the state directory and reused
on the next start, and a re-login after a revoked token asks for the same `device_id`, so that
the bot's account does not grow a new device on every restart. A 429 is waited out for the
`retry_after_ms` the homeserver names (nio does this in its request loop). The first sync skips
the room's history: only commands sent while the agent listens are acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

import nio
import orjson

log = logging.getLogger(__name__)

#: How long one /sync waits on the server for news; a command reaches the agent at once anyway.
SYNC_TIMEOUT_MS = 10_000
_SKIP_HISTORY = {"room": {"timeline": {"limit": 0}}}


@dataclass(frozen=True)
class MatrixTarget:
    """Where and as whom a route's commands are read, from its apprise `matrix://` URL."""

    homeserver: str
    user: str
    #: None: the URL's user part is an access token (`matrix://TOKEN@host/#room`).
    password: str | None
    room: str

    @classmethod
    def from_url(cls, url: str) -> MatrixTarget | None:
        parts = urlsplit(url)
        if parts.scheme not in ("matrix", "matrixs") or not parts.username:
            return None
        scheme = "https" if parts.scheme == "matrixs" else "http"
        port = f":{parts.port}" if parts.port else ""
        room = parts.fragment or unquote(parts.path.strip("/")).split("/")[0]
        if not room:
            query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
            room = unquote(query.get("to", "")).split(",")[0]
        if not room:
            return None
        if room[0] not in "#!":
            room = "#" + room
        password = unquote(parts.password) if parts.password else None
        return cls(f"{scheme}://{parts.hostname}{port}", unquote(parts.username), password, room)


class _Unauthorized(Exception):
    """The stored or given token is no longer valid: log in again (same device)."""


@dataclass(eq=False)
class MatrixCommands:
    """One route's command reader; `on_command(sender, text)` is called for each `!` message."""

    target: MatrixTarget
    on_command: Callable[[str, str], None]
    _: KW_ONLY
    name: str
    where: str
    session_file: Path | None = None
    client: Any = field(default=None, init=False)
    room_id: str | None = field(default=None, init=False)
    since: str | None = field(default=None, init=False)
    task: asyncio.Task[None] | None = field(default=None, init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    #: Password logins done by this reader (a restart with a stored session does none).
    logins: int = field(default=0, init=False)

    async def run(self) -> None:
        """Log in, join, sync; on trouble back off (1 s doubling to 60 s) and carry on."""
        delay = 1.0
        failing = False
        try:
            while True:
                try:
                    if self.since is None:
                        await self._connect()
                        self.ready.set()
                        log.info(
                            "reading commands from Matrix room %s as %s (device %s)",
                            self.target.room,
                            self.client.user_id,
                            self.client.device_id,
                        )
                    await self._sync_once()
                    delay = 1.0
                    failing = False
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not failing:
                        failing = True
                        log.warning("Matrix commands on %s: %s; retrying", self.where, _short(exc))
                    if isinstance(exc, _Unauthorized):
                        self._forget_token()
                        self.since = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
        finally:
            await self.close()

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()

    # -- session ---------------------------------------------------------------------------

    def _load_session(self) -> dict[str, str] | None:
        if self.session_file is None:
            return None
        try:
            data = orjson.loads(self.session_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        if data.get("homeserver") != self.target.homeserver or data.get("user") != self.target.user:
            return None  # the URL names another bot now: its device is not ours
        return {k: str(v) for k, v in data.items() if isinstance(v, str)}

    def _save_session(self) -> None:
        if self.session_file is None:
            return
        data = {
            "homeserver": self.target.homeserver,
            "user": self.target.user,
            "user_id": self.client.user_id,
            "device_id": self.client.device_id,
            "access_token": self.client.access_token,
        }
        tmp = self.session_file.with_suffix(".tmp")
        try:
            self.session_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(orjson.dumps(data))
            os.replace(tmp, self.session_file)
        except OSError as exc:
            # Commands still work; the next start logs in again (as a new device).
            log.warning("Matrix commands on %s: cannot keep the session: %s", self.where, exc)

    def _forget_token(self) -> None:
        """Keeps the device id (the next login asks for it again), drops the token."""
        if self.client is not None:
            self.client.access_token = ""
        if self.session_file is not None and self.session_file.exists():
            data = self._load_session() or {}
            data.pop("access_token", None)
            with contextlib.suppress(OSError):
                self.session_file.write_bytes(orjson.dumps(data))

    # -- protocol --------------------------------------------------------------------------

    def _new_client(self, device_id: str | None) -> Any:
        config = nio.AsyncClientConfig(
            max_timeouts=1,  # then our own backoff, with one warning in the log
            request_timeout=SYNC_TIMEOUT_MS / 1000 + 20,
            store_sync_tokens=False,
            encryption_enabled=False,
        )
        return nio.AsyncClient(
            self.target.homeserver, self.target.user, device_id=device_id, config=config
        )

    async def _connect(self) -> None:
        session = self._load_session() or {}
        if self.client is None:
            self.client = self._new_client(session.get("device_id"))
        client = self.client
        if self.target.password is None:
            client.access_token = self.target.user  # the URL carries a token
            await self._whoami()
        elif session.get("access_token") and not client.access_token:
            client.restore_login(session["user_id"], session["device_id"], session["access_token"])
            try:
                await self._whoami()
            except _Unauthorized:
                client.access_token = ""
        if not client.access_token:
            got = await client.login(self.target.password, device_name="facility-agent")
            if not isinstance(got, nio.LoginResponse):
                raise RuntimeError(f"login: {_error(got)}")
            self.logins += 1
            self._save_session()
        room = self.target.room
        if room.startswith("#") and ":" not in room:
            room += ":" + str(client.user_id).split(":", 1)[1]
        joined = await client.join(room)
        if not isinstance(joined, nio.JoinResponse):
            _raise(joined, "join")
        self.room_id = str(joined.room_id)
        first = await client.sync(timeout=0, sync_filter=_SKIP_HISTORY, full_state=False)
        if not isinstance(first, nio.SyncResponse):
            _raise(first, "sync")
        self.since = str(first.next_batch)

    async def _whoami(self) -> None:
        got = await self.client.whoami()
        if not isinstance(got, nio.WhoamiResponse):
            _raise(got, "whoami")
        self.client.user_id = got.user_id
        if got.device_id:
            self.client.device_id = got.device_id

    async def _sync_once(self) -> None:
        got = await self.client.sync(timeout=SYNC_TIMEOUT_MS, since=self.since, full_state=False)
        if not isinstance(got, nio.SyncResponse):
            _raise(got, "sync")
        self.since = str(got.next_batch)
        room = got.rooms.join.get(self.room_id)
        if room is None:
            return
        for event in room.timeline.events:
            if not isinstance(event, nio.RoomMessageText) or event.sender == self.client.user_id:
                continue
            if event.body.startswith("!"):
                self.on_command(str(event.sender), str(event.body))


def _error(resp: Any) -> str:
    code = getattr(resp, "status_code", None)
    message = getattr(resp, "message", None) or type(resp).__name__
    return f"{code} {message}" if code else str(message)


def _raise(resp: Any, what: str) -> NoReturn:
    if getattr(resp, "status_code", None) in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
        raise _Unauthorized(f"{what}: {_error(resp)}")
    raise RuntimeError(f"{what}: {_error(resp)}")


def _short(exc: Exception) -> str:
    """An exception without URLs (they could carry an access token)."""
    text = str(exc) or type(exc).__name__
    if "://" in text:
        text = type(exc).__name__
    return text[:200]
