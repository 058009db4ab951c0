"""Chat alerts through apprise (Slack, Teams, Matrix, Discord, Telegram, email, ...), delivered
through the outbox, with acknowledgement from Matrix.

The way of an event: `AlertRoute` (alerting.py) decides what to say and when; the rendered
message is stored in the outbox under `notify:{route}`; one delivery task per route sends it with
apprise in a worker thread (apprise is synchronous), retrying with backoff while the service
rejects it or times out (while its host's port accepts no connection, probing it every second
and sending as soon as it does: comeback.py), and only then deletes it. A message that arrives
later than `delayed_after` says so at the top, with the time it was raised. Polling never waits
on any of this: the agent only calls `publish_event`, which stores and returns.

Matrix commands (routes with `allow_commands`): a small client logs in as the bot of the route's
`matrix://` URL, joins the room and long-polls `/sync`; `!ack ID`, `!status` and
`!silence DEVICE 2h` from allowed users act on every route, and the answer goes back through the
same outbox. Messages from anyone else are logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import apprise
import orjson
import requests

from ..model import DeviceState, Event, Severity
from ..outbox import Channel, Outbox, Row
from ..output_config import NotifyRoute, redact_url
from ..supervise import Supervisor
from ..units import parse_duration
from .alerting import AlertRoute, Message, hhmm, human_duration
from .comeback import retry_wait, url_target

log = logging.getLogger(__name__)

_NOTIFY_TYPE = {
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.INFO: apprise.NotifyType.INFO,
}
#: How often group timers and repeats are checked (the latency floor of a grouped alert).
TICK = 0.1


class _Route:
    """One destination: its alert state, its outbox channel, its apprise instance."""

    def __init__(self, sink: NotifySink, config: NotifyRoute, name: str) -> None:
        self.sink = sink
        self.config = config
        self.name = name
        self.url = config.url.get_secret_value()
        self.where = redact_url(self.url)
        #: Probed between retries, so that a service back from an outage gets the queue at once.
        self.target = url_target(self.url)
        self.alerts = AlertRoute(config, name, sink.site, sink.feeds)
        self.rows: list[Row] = []
        self.more = asyncio.Event()
        self.channel: Channel | None = None
        self.task: asyncio.Task[None] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"notify-{name}")
        self.counts = {"sent": 0, "failed": 0, "delayed": 0, "set_aside": 0}
        self.failing_since: float | None = None
        self.apprise = apprise.Apprise(asset=apprise.AppriseAsset(storage_mode="memory"))
        if not self.apprise.add(self.url):
            log.error("notify route %s: apprise does not understand the URL %s", name, self.where)

    @property
    def sink_name(self) -> str:
        return f"notify:{self.name}"

    def store(self, msg: Message) -> None:
        payload = orjson.dumps(
            {"title": msg.title, "body": msg.body, "severity": str(msg.severity), "kind": msg.kind}
        )
        self.sink.outbox.put(self.sink_name, "alert", msg.kind, payload, msg.created)

    def take(self, rows: list[Row]) -> None:
        self.rows.extend(rows)
        self.more.set()

    async def deliver_forever(self) -> None:
        delay = self.config.retry_min
        loop = asyncio.get_running_loop()
        while True:
            if not self.rows:
                self.more.clear()
                await self.more.wait()
            row = self.rows[0]
            try:
                data = orjson.loads(row.payload)
                title, body = str(data["title"]), str(data["body"])
                severity = Severity(data["severity"])
            except Exception as exc:
                self._quarantine(row, exc)
                continue
            late = time.time() - row.created
            if late >= self.config.delayed_after:
                body = (
                    f"⏳ delayed {human_duration(late)}: raised {hhmm(row.created)}, "
                    f"delivered {hhmm(time.time())}\n{body}"
                )
            kind = data.get("kind")
            notify_type = (
                apprise.NotifyType.SUCCESS
                if kind == "resolved"
                else _NOTIFY_TYPE.get(severity, apprise.NotifyType.INFO)
            )
            try:
                ok = await loop.run_in_executor(self.executor, self._send, title, body, notify_type)
            except Exception as exc:
                ok = False
                log.debug("notify route %s: apprise raised %s", self.name, type(exc).__name__)
            if not ok:
                self.counts["failed"] += 1
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.warning(
                        "notify route %s (%s) did not accept a message; retrying with backoff "
                        "(%d waiting)",
                        self.name,
                        self.where,
                        len(self.rows),
                    )
                if await retry_wait(delay, self.target):
                    delay = self.config.retry_min  # the service is back: a fresh start
                    await loop.run_in_executor(self.executor, self._forget_failed_tries)
                else:
                    delay = min(delay * 2, self.config.retry_max)
                continue
            delay = self.config.retry_min
            if self.failing_since is not None:
                log.warning("notify route %s delivers again", self.name)
                self.failing_since = None
            self.rows.pop(0)
            self.counts["sent"] += 1
            if late >= self.config.delayed_after:
                self.counts["delayed"] += 1
            assert self.channel is not None
            self.channel.ack(row.seq)

    def _quarantine(self, row: Row, exc: Exception) -> None:
        """A row this version cannot read (corrupt, or an older format): set aside, counted."""
        self.rows.pop(0)
        self.counts["set_aside"] += 1
        assert self.channel is not None
        self.channel.set_aside(row, f"undecodable: {type(exc).__name__}: {exc}"[:300])
        log.warning(
            "notify route %s: outbox row %d is not a message this version reads (%s); set aside",
            self.name,
            row.seq,
            type(exc).__name__,
        )

    def _forget_failed_tries(self) -> None:
        """apprise spaces two requests to a service 5.5 s apart, counting tries that reached
        nobody: forgotten, so that a service back from an outage gets the message at once."""
        for service in self.apprise:
            with contextlib.suppress(AttributeError):
                service._last_io_datetime = None  # apprise 2.x: the start of its throttle

    def _send(self, title: str, body: str, notify_type: apprise.NotifyType) -> bool:
        """In the route's own thread, so one slow service never holds up another."""
        return bool(self.apprise.notify(body=body, title=title, notify_type=notify_type))


class NotifySink:
    """The `notify:` routes of the site file, as one output."""

    name = "notify"

    def __init__(
        self,
        routes: Iterable[NotifyRoute],
        site: str,
        outbox: Outbox,
        *,
        feeds: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.site = site
        self.outbox = outbox
        self.feeds = {k: list(v) for k, v in (feeds or {}).items()}
        self.states: dict[str, DeviceState] = {}
        self.routes: list[_Route] = []
        for i, cfg in enumerate(routes):
            self.routes.append(_Route(self, cfg, cfg.name or f"route-{i}"))
        self._ticker: asyncio.Task[None] | None = None
        self._listeners: list[MatrixCommands] = []
        self.supervisor = Supervisor()

    async def start(self) -> None:
        if self._ticker is not None:
            return
        for route in self.routes:
            route.more = asyncio.Event()
            route.channel = self.outbox.channel(route.sink_name, route.take, window=200)
        await self.outbox.open()
        for route in self.routes:
            route.task = self.supervisor.spawn(route.sink_name, route.deliver_forever)
            if route.config.allow_commands:
                listener = MatrixCommands.for_route(self, route)
                if listener is not None:
                    self._listeners.append(listener)
                    await listener.start()
        self._ticker = self.supervisor.spawn("notify-tick", self._tick_forever)

    def publish_state(self, state: DeviceState) -> None:
        self.states[state.device] = state

    def publish_event(self, event: Event) -> None:
        now = time.time()
        for route in self.routes:
            route.alerts.offer(event, now)
        self._emit(now)

    async def stop(self, timeout: float = 5.0) -> None:
        if self._ticker is None:
            return
        self._ticker.cancel()
        for listener in self._listeners:
            await listener.stop()
        self._listeners.clear()
        self._emit(time.time())
        deadline = time.monotonic() + min(timeout, 3.0)
        while any(r.rows and r.failing_since is None for r in self.routes):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        for route in self.routes:
            if route.task is not None:
                route.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await route.task
            if route.channel is not None:
                route.channel.release(len(route.rows))
            route.rows.clear()
            route.executor.shutdown(wait=False)
        self._ticker = None
        await self.outbox.close()

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for route in self.routes:
            for key, value in route.counts.items():
                out[key] = out.get(key, 0) + value
            out["queued"] = out.get("queued", 0) + (
                route.channel.pending if route.channel is not None else 0
            )
            out["firing"] = out.get("firing", 0) + len(route.alerts.firing())
        return out

    def _emit(self, now: float) -> None:
        for route in self.routes:
            for msg in route.alerts.due(now):
                route.store(msg)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self._emit(time.time())
            except Exception:
                log.exception("alert grouping failed")

    # -- commands --------------------------------------------------------------------------

    def command(self, route: _Route, sender: str, text: str) -> None:
        """One `!command` from chat; `sender` is checked against the route's allow list."""
        words = text.strip().split()
        if not words or not words[0].startswith("!"):
            return
        if sender not in route.config.allow_commands:
            log.warning(
                "ignored %s from %s on route %s: not in allow_commands",
                words[0],
                sender,
                route.name,
            )
            return
        now = time.time()
        verb, args = words[0].lower(), words[1:]
        if verb == "!ack" and args:
            found = [a for r in self.routes if (a := r.alerts.ack(args[0], sender)) is not None]
            if found:
                a = found[0]
                reply = f"✔ {a.id} acknowledged by {sender}: {a.event.message}. No more repeats."
                log.info("alert %s acknowledged by %s", a.id, sender)
            else:
                reply = f"No alert {args[0]!r}. `!status` lists the firing ones."
        elif verb == "!status":
            reply = route.alerts.status_text(self.states, now)
        elif verb == "!silence" and len(args) >= 2:
            try:
                seconds = float(parse_duration(args[1]))
            except ValueError as exc:
                reply = f"Cannot silence: {exc}"
            else:
                for r in self.routes:
                    r.alerts.silence(args[0], now + seconds)
                reply = f"🔕 {args[0]} silenced until {hhmm(now + seconds)} by {sender}."
                log.info("%s silenced for %.0f s by %s", args[0], seconds, sender)
        else:
            reply = "Commands: !ack ID · !status · !silence DEVICE 2h"
        route.store(Message(f"[{self.site}] {verb}", reply, Severity.INFO, "reply", now))


class MatrixCommands:
    """Reads `!commands` from the route's Matrix room (client-server API over requests)."""

    def __init__(
        self,
        sink: NotifySink,
        route: _Route,
        base: str,
        user: str,
        password: str | None,
        room: str,
    ) -> None:
        self.sink = sink
        self.route = route
        self.base = base
        self.user = user
        self.password = password
        self.room = room
        self.session = requests.Session()
        self.token: str | None = None if password is not None else user
        self.user_id: str | None = None
        self.room_id: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    @classmethod
    def for_route(cls, sink: NotifySink, route: _Route) -> MatrixCommands | None:
        parts = urlsplit(route.url)
        if parts.scheme not in ("matrix", "matrixs"):
            log.warning("notify route %s: commands are only read from Matrix for now", route.name)
            return None
        scheme = "https" if parts.scheme == "matrixs" else "http"
        port = f":{parts.port}" if parts.port else ""
        room = parts.fragment or unquote(parts.path.strip("/")).split("/")[0]
        if not room:
            query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
            room = unquote(query.get("to", "")).split(",")[0]
        if room and room[0] not in "#!":
            room = "#" + room
        if not parts.username or not room:
            log.error("notify route %s: the Matrix URL names no user or room", route.name)
            return None
        password = unquote(parts.password) if parts.password else None
        base = f"{scheme}://{parts.hostname}{port}"
        return cls(sink, route, base, unquote(parts.username), password, room)

    async def start(self) -> None:
        self.task = self.sink.supervisor.spawn(f"matrix-commands:{self.route.name}", self._run)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.session.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        kw.setdefault("timeout", 10)
        resp = self.session.request(method, self.base + path, headers=headers, **kw)
        if resp.status_code >= 400:
            raise RuntimeError(f"HTTP {resp.status_code} on {path.split('?')[0]}")
        return resp.json()

    def _login_and_join(self) -> str:
        if self.password is not None:
            body = {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": self.user},
                "password": self.password,
            }
            got = self._call("POST", "/_matrix/client/v3/login", json=body)
            self.token = got["access_token"]
            self.user_id = got["user_id"]
        else:
            self.user_id = self._call("GET", "/_matrix/client/v3/account/whoami")["user_id"]
        room = self.room
        if room.startswith("#") and ":" not in room:
            room += ":" + str(self.user_id).split(":", 1)[1]
        joined = self._call("POST", f"/_matrix/client/v3/join/{quote(room, safe='')}", json={})
        self.room_id = str(joined["room_id"])
        filt = orjson.dumps({"room": {"timeline": {"limit": 0}}}).decode()
        first = self._call("GET", "/_matrix/client/v3/sync", params={"filter": filt})
        return str(first["next_batch"])

    def _sync(self, since: str) -> tuple[str, list[tuple[str, str]]]:
        got = self._call(
            "GET",
            "/_matrix/client/v3/sync",
            params={"since": since, "timeout": 10000},
            timeout=30,
        )
        out: list[tuple[str, str]] = []
        room = got.get("rooms", {}).get("join", {}).get(self.room_id, {})
        for ev in room.get("timeline", {}).get("events", []):
            if ev.get("type") != "m.room.message" or ev.get("sender") == self.user_id:
                continue
            body = ev.get("content", {}).get("body", "")
            if isinstance(body, str) and body.startswith("!"):
                out.append((str(ev["sender"]), body))
        return str(got["next_batch"]), out

    async def _run(self) -> None:
        delay = 1.0
        since: str | None = None
        failing = False
        while True:
            try:
                if since is None:
                    since = await asyncio.to_thread(self._login_and_join)
                    self.ready.set()
                    log.info("reading commands from Matrix room %s as %s", self.room, self.user_id)
                since, commands = await asyncio.to_thread(self._sync, since)
                for sender, text in commands:
                    self.sink.command(self.route, sender, text)
                delay = 1.0
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    failing = True
                    log.warning(
                        "Matrix commands on %s: %s; retrying", self.route.where, _short(exc)
                    )
                if isinstance(exc, RuntimeError) and "401" in str(exc):
                    since = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)


def _short(exc: Exception) -> str:
    """An exception without URLs (they could carry an access token)."""
    text = str(exc)
    if "://" in text:
        text = type(exc).__name__
    return text[:200]
