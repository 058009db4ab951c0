"""Delivery of chat alerts through apprise (Slack, Teams, Matrix, Discord, Telegram, email,
...), by way of the outbox.

The rendered message is stored in the outbox under `notify:{route}`; one delivery task per route
sends it with apprise in the route's own worker thread (apprise is synchronous), retrying with
backoff while the service rejects it or times out (while its host's port accepts no connection,
probing it every second and sending as soon as it does: comeback.py), and only then deletes it.
A message that arrives later than `delayed_after` says so at the top, with the time it was
raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import apprise
import orjson

from facility_agent.config.outputs import NotifyRoute, redact_url
from facility_agent.core.model import Severity
from facility_agent.outbox import Channel, Outbox, Row
from facility_agent.sinks.comeback import retry_wait, url_target
from facility_agent.sinks.notify.alerting import AlertRoute, Message, hhmm, human_duration

log = logging.getLogger(__name__)

_NOTIFY_TYPE = {
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.INFO: apprise.NotifyType.INFO,
}


class DeliveryRoute:
    """One destination: its alert state, its outbox channel, its apprise instance."""

    def __init__(
        self,
        outbox: Outbox,
        config: NotifyRoute,
        name: str,
        site: str,
        feeds: Mapping[str, Iterable[str]],
        store: Path | None = None,
    ) -> None:
        self.outbox = outbox
        self.config = config
        self.name = name
        self.url = config.url.get_secret_value()
        self.where = redact_url(self.url)
        #: Probed between retries, so that a service back from an outage gets the queue at once.
        self.target = url_target(self.url)
        self.alerts = AlertRoute(config, name, site, feeds)
        self.rows: list[Row] = []
        self.more = asyncio.Event()
        self.channel: Channel | None = None
        self.task: asyncio.Task[None] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"notify-{name}")
        self.counts = {"sent": 0, "failed": 0, "delayed": 0, "set_aside": 0}
        self.failing_since: float | None = None
        self.apprise = apprise.Apprise(asset=_asset(store))
        if not self.apprise.add(self.url):
            log.error("notify route %s: apprise does not understand the URL %s", name, self.where)

    @property
    def sink_name(self) -> str:
        return f"notify:{self.name}"

    def store(self, msg: Message) -> None:
        payload = orjson.dumps(
            {"title": msg.title, "body": msg.body, "severity": str(msg.severity), "kind": msg.kind}
        )
        self.outbox.put(self.sink_name, "alert", msg.kind, payload, msg.created)

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


def _asset(store: Path | None) -> apprise.AppriseAsset:
    """With a state directory, apprise keeps its logins there (a Matrix sender keeps its token
    and device across restarts instead of logging in as a new device); the directory is 0700,
    as it holds tokens. Without one, memory only."""
    if store is None:
        return apprise.AppriseAsset(storage_mode="memory")
    try:
        store.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("apprise keeps its logins in memory only: %s", exc)
        return apprise.AppriseAsset(storage_mode="memory")
    return apprise.AppriseAsset(storage_path=str(store), storage_mode="flush")
