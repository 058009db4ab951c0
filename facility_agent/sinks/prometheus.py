"""Prometheus exposition: `/metrics` (every device metric as a gauge, comm, status flags, the
agent's own counters) and `/healthz` for the site box's supervisor.

A pull output, so no outbox: Prometheus scrapes what is current. prometheus-client renders the
text format in the HTTP thread, but that thread never reads anything the event loop changes: each
scrape asks the loop for a `Snapshot` (plain copies, built in one loop callback, so every value
of one scrape is from the same instant) and renders that. A loop too busy to answer within
SNAPSHOT_WAIT gets the previous snapshot served, and `/healthz` reports the stall.

Names: a metric `battery.charge` becomes `facility_battery_charge{site,device,driver}`; a text
metric (`ups.model`) becomes `facility_info{site,device,name="ups.model",value="..."} 1`; flags
are `facility_status{site,device,flag="OB"} 1`; comm is `facility_comm_ok` (1 or 0).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from facility_agent.config.outputs import PrometheusConfig
from facility_agent.core.model import DeviceState, Event
from facility_agent.core.sink import Sink
from facility_agent.outbox import Outbox
from facility_agent.runtime.faults import Faults
from facility_agent.runtime.supervise import Supervisor

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
#: Sink statistics that only ever grow (exposed as counters, the rest as gauges).
COUNTER_STATS = frozenset(
    {"sent", "dropped", "connects", "disconnects", "failed", "set_aside", "retries", "written"}
)

StartResponse = Callable[..., Any]
#: How long a scrape waits for the event loop to copy the agent's state.
SNAPSHOT_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class OutputSnapshot:
    name: str
    stats: Mapping[str, Any]
    connected: bool | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a scrape shows, copied on the event loop in one go."""

    states: Mapping[str, DeviceState] = field(default_factory=dict)
    events: Mapping[tuple[str, str], int] = field(default_factory=dict)
    outputs: tuple[OutputSnapshot, ...] = ()
    outbox: Mapping[str, Any] | None = None
    outbox_dropped: Mapping[tuple[str, str], int] = field(default_factory=dict)
    outbox_errors: Mapping[str, int] = field(default_factory=dict)
    faults: Mapping[tuple[str, str], int] = field(default_factory=dict)
    tasks: Mapping[str, Any] = field(default_factory=dict)
    #: (device, metric) -> times the metric turned unknown.
    unknown: Counter[tuple[str, str]] = field(default_factory=Counter)


def metric_name(name: str) -> str:
    """`battery.charge` -> `facility_battery_charge`."""
    return "facility_" + _UNSAFE.sub("_", name).strip("_")


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("prometheus http: " + format, *args)


class PrometheusSink(Sink):
    """Serves `/metrics` and `/healthz`; fed by the agent like any other output."""

    name = "prometheus"

    def __init__(
        self,
        config: PrometheusConfig,
        site: str,
        *,
        sinks: Iterable[Sink] = (),
        outbox: Outbox | None = None,
    ) -> None:
        self.config = config
        self.site = site
        self.sinks = list(sinks)
        self.outbox = outbox
        self._states: dict[str, DeviceState] = {}
        self._events: Counter[tuple[str, str]] = Counter()
        #: (device, metric) -> times the metric turned unknown (see `count_unknown`).
        self._unknown: Counter[tuple[str, str]] = Counter()
        self._tick = time.monotonic()
        self._started = time.time()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last = Snapshot()
        #: The agent's, once it adopts this sink (supervise.py, faults.py).
        self.supervisor = Supervisor()
        self.faults = Faults()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SiteCollector(self))
        self._metrics_app = make_wsgi_app(self.registry)

    @property
    def port(self) -> int:
        """The bound port (useful with `listen: 127.0.0.1:0`)."""
        assert self._server is not None
        return int(self._server.server_port)

    def attach(self, supervisor: Supervisor, faults: Faults) -> None:
        self.supervisor = supervisor
        self.faults = faults

    async def start(self) -> None:
        if self._server is not None:
            return
        try:
            server = make_server(
                self.config.host,
                self.config.port,
                self._app,
                server_class=_Server,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise OSError(f"prometheus: cannot listen on {self.config.listen}: {exc}") from None
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=server.serve_forever, name="prometheus-http", daemon=True
        )
        self._thread.start()
        self._ticker = self.supervisor.spawn("prometheus-tick", self._tick_loop)
        log.info("serving /metrics and /healthz on %s:%d", self.config.host, self.port)

    def publish_state(self, state: DeviceState) -> None:
        count_unknown(self._unknown, self._states.get(state.device), state)
        states = dict(self._states)
        states[state.device] = state
        self._states = states

    def publish_event(self, event: Event) -> None:
        self._events[(event.type, str(event.severity))] += 1

    async def stop(self, timeout: float = 5.0) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    def stats(self) -> dict[str, int]:
        return {"devices": len(self._states)}

    async def _tick_loop(self) -> None:
        """Proof of life for `/healthz`: a stuck event loop stops this."""
        while True:
            self._tick = time.monotonic()
            await asyncio.sleep(1.0)

    # -- snapshots: built on the loop, read by the HTTP thread --------------------------------

    def build_snapshot(self) -> Snapshot:
        """On the event loop: copy what a scrape shows (cheap: the states dict is immutable)."""
        outputs: list[OutputSnapshot] = []
        for other in self.sinks:
            name = other.name or type(other).__name__.lower()
            outputs.append(OutputSnapshot(name, dict(other.stats()), other.connected))
        box = self.outbox
        return Snapshot(
            states=self._states,
            unknown=Counter(self._unknown),
            events=dict(self._events),
            outputs=tuple(outputs),
            outbox=box.stats() if box is not None else None,
            outbox_dropped=dict(box.dropped) if box is not None else {},
            outbox_errors=dict(box.errors) if box is not None else {},
            faults=dict(self.faults.counts),
            tasks=self.supervisor.snapshot(),
        )

    def snapshot(self) -> Snapshot:
        """From the HTTP thread: ask the loop for a fresh snapshot; the last one if it is busy."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return self._last
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:  # called on the loop itself (tests, tools)
                self._last = self.build_snapshot()
                return self._last
        fut: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def build() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(self.build_snapshot())
            except Exception as exc:
                fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(build)
            self._last = fut.result(SNAPSHOT_WAIT)
        except concurrent.futures.TimeoutError:
            fut.cancel()
        except RuntimeError:
            pass  # the loop closed meanwhile: the agent is stopping
        return self._last

    def health(self) -> tuple[bool, dict[str, Any]]:
        lag = time.monotonic() - self._tick
        snap = self.snapshot()
        outputs: dict[str, Any] = {}
        for out in snap.outputs:
            entry: dict[str, Any] = {}
            if out.connected is not None:
                entry["connected"] = out.connected
            entry.update(out.stats)
            outputs[out.name] = entry
        stalled = lag >= self.config.stall_after
        down = list(snap.tasks.get("down", []))
        body: dict[str, Any] = {
            "status": "stalled" if stalled else "degraded" if down else "ok",
            "site": self.site,
            "loop_lag_s": round(lag, 3),
            "devices": len(snap.states),
            "outputs": outputs,
        }
        body.update(health_tasks(snap))
        if snap.outbox is not None:
            body["outbox"] = {
                "rows": sum(snap.outbox["rows"].values()),
                "write_errors": sum(snap.outbox_errors.values()),
            }
        # A dead task is "degraded" but still 200: the agent restarts it itself, and a liveness
        # probe that restarted the whole agent for it would interrupt a plan in progress.
        return not stalled, body

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok, body = self.health()
            status = "200 OK" if ok else "503 Service Unavailable"
            payload = orjson.dumps(body)
            start_response(status, [("Content-Type", "application/json")])
            return [payload]
        if path in ("/metrics", "/"):
            result: Iterable[bytes] = self._metrics_app(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]


def count_unknown(
    counts: Counter[tuple[str, str]], prev: DeviceState | None, state: DeviceState
) -> None:
    """Count a metric each time it turns unknown (a value the device sent that is not a
    reading): a state republished unchanged, or still unknown, counts nothing more."""
    before = set(prev.unknown) if prev is not None else set()
    for name in state.unknown:
        if name not in before:
            counts[(state.device, name)] += 1


def unknown_metrics(
    site: str, states: Mapping[str, DeviceState], counts: Counter[tuple[str, str]]
) -> Iterator[Metric]:
    """`facility_unknown` (1 per metric unknown now) and `facility_unknown_readings_total`
    (times it turned unknown since start), per device and metric."""
    now = GaugeMetricFamily(
        "facility_unknown",
        "1 while the device's last value for the metric was not a reading (out of range, sentinel)",
        None,
        ["site", "device", "driver", "metric"],
    )
    for state in states.values():
        for name in state.unknown:
            now.add_metric([site, state.device, state.driver, name], 1.0)
    yield now
    total = CounterMetricFamily(
        "facility_unknown_readings",
        "Times a metric turned unknown (the device sent a value that is not a reading)",
        labels=["site", "device", "metric"],
    )
    for (device, name), n in sorted(counts.items()):
        total.add_metric([site, device, name], float(n))
    yield total


class _SiteCollector(Collector):
    def __init__(self, sink: PrometheusSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        sink = self.sink
        site = sink.site
        snap = sink.snapshot()
        states = snap.states
        labels = ["site", "device", "driver"]
        families: dict[str, GaugeMetricFamily] = {}
        comm = GaugeMetricFamily(
            "facility_comm_ok", "1 while the device answers polls", None, labels
        )
        flags = GaugeMetricFamily(
            "facility_status",
            "Status flags the device reports (NUT's for power devices)",
            None,
            [*labels, "flag"],
        )
        info = GaugeMetricFamily(
            "facility_info",
            "Text metrics of a device (ups.model ...)",
            None,
            [*labels, "name", "value"],
        )
        updated = GaugeMetricFamily(
            "facility_state_timestamp_seconds",
            "When the device's state was last read",
            None,
            labels,
        )
        for state in states.values():
            lv = [site, state.device, state.driver]
            comm.add_metric(lv, 1.0 if state.comm == "ok" else 0.0)
            updated.add_metric(lv, state.ts.timestamp())
            for flag in state.status:
                flags.add_metric([*lv, flag], 1.0)
            for name, value in state.metrics.items():
                if isinstance(value, str):
                    info.add_metric([*lv, name, value], 1.0)
                    continue
                fam_name = metric_name(name)
                fam = families.get(fam_name)
                if fam is None:
                    fam = families[fam_name] = GaugeMetricFamily(
                        fam_name, f"{name} as the device reports it", None, labels
                    )
                fam.add_metric(lv, float(value))
        yield comm
        yield flags
        yield info
        yield updated
        yield from families.values()
        yield from unknown_metrics(site, states, snap.unknown)
        yield from self._agent_metrics(snap)
        yield from fault_metrics(site, snap)

    def _agent_metrics(self, snap: Snapshot) -> Iterator[Metric]:
        sink = self.sink
        up = GaugeMetricFamily("facility_agent_up", "1 while the agent runs", None, ["site"])
        up.add_metric([sink.site], 1.0)
        yield up
        start = GaugeMetricFamily(
            "facility_agent_start_time_seconds", "When the agent started", None, ["site"]
        )
        start.add_metric([sink.site], sink._started)
        yield start
        events = CounterMetricFamily(
            "facility_agent_events",
            "Events raised since start",
            labels=["site", "type", "severity"],
        )
        for (etype, severity), n in sorted(snap.events.items()):
            events.add_metric([sink.site, etype, severity], float(n))
        yield events
        per_stat: dict[str, list[tuple[str, float]]] = {}
        for out in snap.outputs:
            for key, value in out.stats.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    per_stat.setdefault(key, []).append((out.name, float(value)))
            if out.connected is not None:
                per_stat.setdefault("connected", []).append((out.name, float(out.connected)))
        for key, values in sorted(per_stat.items()):
            fam_name = f"facility_agent_output_{_UNSAFE.sub('_', key)}"
            family: Metric
            if key in COUNTER_STATS:
                family = CounterMetricFamily(fam_name, f"Output statistic {key}", labels=["output"])
            else:
                family = GaugeMetricFamily(fam_name, f"Output statistic {key}", None, ["output"])
            for output, value in values:
                family.add_metric([output], value)
            yield family
        if snap.outbox is not None:
            stats = snap.outbox
            rows = GaugeMetricFamily(
                "facility_agent_outbox_rows", "Messages waiting in the outbox", None, ["output"]
            )
            for output, n in sorted(stats["rows"].items()):
                rows.add_metric([output], float(n))
            yield rows
            yield counter(
                "facility_agent_outbox_dropped",
                "Messages the outbox bounds dropped (or set aside as undeliverable)",
                ["output", "reason"],
                snap.outbox_dropped.items(),
            )
            yield counter(
                "facility_agent_outbox_errors",
                "Failed outbox writes or reads",
                ["kind"],
                (((kind,), n) for kind, n in snap.outbox_errors.items()),
            )
            size = GaugeMetricFamily("facility_agent_outbox_bytes", "Bytes used by the outbox")
            size.add_metric([], float(stats["bytes"]))
            yield size


# -- fault isolation and supervision (kept apart from the metrics above) ----------------------


def counter(
    name: str, doc: str, labels: list[str], counts: Iterable[tuple[tuple[str, ...], float]]
) -> CounterMetricFamily:
    """A counter family with one sample per (label values, count), in label order."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, n in sorted(counts):
        family.add_metric(list(values), float(n))
    return family


def health_tasks(snap: Snapshot) -> dict[str, Any]:
    """`/healthz` fields: tasks down now (the check fails while any is), restarts so far."""
    out: dict[str, Any] = {"tasks_down": list(snap.tasks.get("down", []))}
    restarts = snap.tasks.get("restarts")
    if restarts:
        out["task_restarts"] = dict(restarts)
    failures: dict[str, int] = {}
    for (part, _), n in snap.faults.items():
        failures[part] = failures.get(part, 0) + n
    if failures:
        out["publish_errors"] = failures
    return out


def fault_metrics(site: str, snap: Snapshot) -> Iterator[Metric]:
    """Sinks that raised on the event path, and supervised tasks down or restarted."""
    yield counter(
        "facility_agent_output_publish_errors",
        "Times an output (or listener) raised while handed a state or event",
        ["output", "kind"],
        snap.faults.items(),
    )
    down = GaugeMetricFamily(
        "facility_agent_task_down",
        "1 while a supervised task is dead, waiting to restart",
        None,
        ["site", "task"],
    )
    for entry in snap.tasks.get("down", []):
        down.add_metric([site, str(entry["name"])], 1.0)
    yield down
    yield counter(
        "facility_agent_task_restarts",
        "Restarts of supervised tasks",
        ["site", "task"],
        (((site, name), n) for name, n in snap.tasks.get("restarts", {}).items()),
    )
