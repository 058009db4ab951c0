"""InfluxDB output through the v2 write API (InfluxDB 2.x/3.x, VictoriaMetrics, ...).

Every state becomes one line of line protocol, stored in the outbox first, and written in
batches; a batch leaves the outbox only when the server answered 2xx. We use influxdb-client's
SYNCHRONOUS write API in a worker thread and do the batching and retrying ourselves: the
client's own batching mode keeps points in memory and gives up after its retries, which is
exactly the data loss the outbox is here to prevent.

One type per field, forever, so that no write ever conflicts with an earlier one:

* measurement `facility` (configurable), tags `site`, `device`, `driver`;
* every numeric metric (int, float, bool) is a **float** field; its key is the metric name with
  dots made underscores (`battery.charge` -> `battery_charge`);
* every text metric is a string field with a `_str` suffix (`ups.model` -> `ups_model_str`), so
  a metric that is text on one device and a number on another never collides;
* `comm_ok` (float 1/0) and `status_str` (the flags, space separated);
* events go to `facility_event` with tags `site`, `device`, `type`, `severity` and fields
  `count` (1.0), `id_str`, `message_str`.

Answers: 2xx -> acknowledged; 400/422 -> the batch is split in halves until the bad line is
alone, which is set aside (kept in the outbox's `set_aside` table, counted, logged) while the
rest flows; 401/403 -> logged as a configuration problem, retried (nothing is dropped);
413 -> split; anything else, or no answer -> retried with exponential backoff; while the server's
port accepts no connection it is probed every second and written to as soon as it does
(comeback.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from facility_agent.config.outputs import InfluxConfig, redact_url
from facility_agent.core.model import DeviceState, Event
from facility_agent.core.sink import Sink
from facility_agent.outbox import Channel, Outbox, Row
from facility_agent.runtime.faults import Faults
from facility_agent.runtime.supervise import Supervisor
from facility_agent.sinks.comeback import retry_wait, url_target

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_SPLIT = frozenset({400, 413, 422})
_MS: WritePrecision = WritePrecision.MS  # type: ignore[assignment]


def field_key(name: str) -> str:
    """`battery.charge` -> `battery_charge`."""
    return _UNSAFE.sub("_", name)


def state_line(measurement: str, site: str, state: DeviceState) -> str:
    point = (
        Point(measurement)  # type: ignore[no-untyped-call]
        .tag("site", site)
        .tag("device", state.device)
        .tag("driver", state.driver)
        .field("comm_ok", 1.0 if state.comm == "ok" else 0.0)
        .field("status_str", " ".join(state.status))
        .time(int(state.ts.timestamp() * 1000), WritePrecision.MS)
    )
    for name, value in state.metrics.items():
        if isinstance(value, str):
            point.field(f"{field_key(name)}_str", value)
        else:
            point.field(field_key(name), float(value))
    return str(point.to_line_protocol())


def event_line(measurement: str, event: Event) -> str:
    point = (
        Point(f"{measurement}_event")  # type: ignore[no-untyped-call]
        .tag("site", event.site)
        .tag("device", event.device)
        .tag("type", event.type)
        .tag("severity", str(event.severity))
        .field("count", 1.0)
        .field("id_str", event.id)
        .field("message_str", event.message)
        .time(int(event.ts.timestamp() * 1000), WritePrecision.MS)
    )
    return str(point.to_line_protocol())


class _Refused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class InfluxSink(Sink):
    """Writes readings and events to InfluxDB through the outbox."""

    name = "influxdb"

    def __init__(self, config: InfluxConfig, site: str, outbox: Outbox) -> None:
        self.config = config
        self.site = site
        self.outbox = outbox
        self.where = redact_url(config.url)
        self._rows: list[Row] = []
        self._more = asyncio.Event()
        self._channel: Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: InfluxDBClient | None = None
        self._write_api: WriteApi | None = None
        self._counts = {"sent": 0, "set_aside": 0, "failed": 0, "retries": 0}
        self._failing_since: float | None = None
        self._connected = False
        self.supervisor = Supervisor()
        #: Probed between retries, so that a server back from an outage is written to at once.
        self._target = url_target(config.url)

    def attach(self, supervisor: Supervisor, faults: Faults) -> None:
        self.supervisor = supervisor

    async def start(self) -> None:
        if self._task is not None:
            return
        token = self.config.token.get_secret_value() if self.config.token else ""
        self._client = InfluxDBClient(
            url=self.config.url,
            token=token,
            org=self.config.org,
            timeout=int(self.config.timeout * 1000),
            verify_ssl=self.config.verify_tls,
            retries=False,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._more = asyncio.Event()
        self._channel = self.outbox.channel("influx", self._take, window=4 * self.config.batch_size)
        await self.outbox.open()
        self._task = self.supervisor.spawn("influx-writer", self._run)

    def publish_state(self, state: DeviceState) -> None:
        line = state_line(self.config.measurement, self.site, state)
        self.outbox.put("influx", "reading", "", line.encode(), state.ts.timestamp())

    def publish_event(self, event: Event) -> None:
        line = event_line(self.config.measurement, event)
        self.outbox.put("influx", "event", "", line.encode(), event.ts.timestamp())

    async def stop(self, timeout: float = 5.0) -> None:
        if self._task is None:
            return
        deadline = time.monotonic() + timeout
        await self.outbox.flush(min(timeout, 2.0))
        while (self._rows or self.pending()) and time.monotonic() < deadline:
            if self._failing_since is not None:
                break  # the server is away: what is left stays in the outbox
            await asyncio.sleep(0.05)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._channel is not None:
            self._channel.release(len(self._rows))
        self._rows.clear()
        await self.outbox.close()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._client.close)
        self._client = None

    def pending(self) -> int:
        return self._channel.pending if self._channel is not None else 0

    @property
    def connected(self) -> bool:
        return self._connected

    def stats(self) -> dict[str, int]:
        return {"queued": self.pending(), **self._counts}

    # -- the writer task -----------------------------------------------------------------------

    def _take(self, rows: list[Row]) -> None:
        for row in rows:
            if isinstance(row.payload, bytes):
                self._rows.append(row)
                continue
            # An old format (text, not bytes) would fail every batch it is in: set it aside.
            assert self._channel is not None
            self._channel.set_aside(row, f"payload is {type(row.payload).__name__}, not bytes")
            self._counts["set_aside"] += 1
            log.warning("InfluxDB: outbox row %d set aside: not a line of bytes", row.seq)
        self._more.set()

    async def _run(self) -> None:
        delay = self.config.retry_min
        while True:
            if not self._rows:
                self._more.clear()
                await self._more.wait()
            if len(self._rows) < self.config.batch_size:
                # A partial batch waits a little for company, unless it is catching up.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.flush_interval):
                        await self._full()
            batch = self._rows[: self.config.batch_size]
            try:
                await self._write_batch(batch)
            except Exception as exc:
                self._counts["retries"] += 1
                self._note_failure(exc)
                if await retry_wait(delay, self._target):
                    delay = self.config.retry_min  # the server is back: a fresh start
                else:
                    delay = min(delay * 2, self.config.retry_max)
                continue
            delay = self.config.retry_min
            self._note_success()

    async def _full(self) -> None:
        while len(self._rows) < self.config.batch_size:
            self._more.clear()
            await self._more.wait()

    async def _write_batch(self, batch: list[Row]) -> None:
        """Write `batch` (a prefix of `self._rows`); bad lines are set aside, the rest acked."""
        try:
            await asyncio.to_thread(self._post, batch)
        except _Refused as exc:
            if exc.status not in _SPLIT:
                raise
            if len(batch) == 1:
                self._set_aside(batch[0], exc)
                return
            half = len(batch) // 2
            await self._write_batch(batch[:half])
            await self._write_batch(batch[half:])
            return
        self._done(batch)

    def _done(self, batch: list[Row]) -> None:
        assert self._channel is not None
        for row in batch:
            self._channel.ack(row.seq)
        self._counts["sent"] += len(batch)
        done = {row.seq for row in batch}
        self._rows = [r for r in self._rows if r.seq not in done]

    def _set_aside(self, row: Row, exc: _Refused) -> None:
        assert self._channel is not None
        reason = f"HTTP {exc.status}: {exc.body[:300]}"
        self._channel.set_aside(row, reason)
        self._counts["set_aside"] += 1
        self._rows = [r for r in self._rows if r.seq != row.seq]
        log.warning(
            "InfluxDB at %s refused a point (%s); set aside, the rest flows: %s",
            self.where,
            reason,
            row.payload[:200].decode(errors="replace"),
        )

    def _post(self, batch: list[Row]) -> None:
        """In a worker thread: one write request."""
        api = self._write_api
        assert api is not None
        try:
            api.write(
                bucket=self.config.bucket,
                org=self.config.org or "-",
                record=b"\n".join(r.payload for r in batch),
                write_precision=_MS,
            )
        except ApiException as exc:
            body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
            raise _Refused(int(exc.status or 0), str(body or exc.reason or "")) from None

    def _note_failure(self, exc: Exception) -> None:
        self._connected = False
        first = self._failing_since is None
        if first:
            self._failing_since = time.monotonic()
        self._counts["failed"] += 1
        if isinstance(exc, _Refused) and exc.status in (401, 403):
            text = f"HTTP {exc.status}: check influxdb.token, org and bucket"
        elif isinstance(exc, _Refused):
            text = f"HTTP {exc.status}"
        else:
            text = _short(exc)
        level = logging.WARNING if first else logging.DEBUG
        log.log(
            level,
            "cannot write to InfluxDB at %s (%s); %d reading(s) kept, retrying with backoff",
            self.where,
            text,
            self.pending(),
        )

    def _note_success(self) -> None:
        self._connected = True
        if self._failing_since is not None:
            down = time.monotonic() - self._failing_since
            log.warning(
                "InfluxDB at %s accepts writes again after %.0f s; catching up", self.where, down
            )
            self._failing_since = None


def _short(exc: Exception) -> str:
    """An exception without URLs (they could hold a token in a query string)."""
    text = f"{type(exc).__name__}: {exc}"
    text = re.sub(r"https?://\S+", "<url>", text)
    return text[:200]
