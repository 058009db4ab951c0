"""InfluxDB output against real VictoriaMetrics (data read back and compared, an outage, a bad
point), and the Prometheus endpoint parsed back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from facility_agent.config.outputs import InfluxConfig, PrometheusConfig
from facility_agent.core.model import DeviceState, Event, Severity
from facility_agent.core.sink import Sink
from facility_agent.outbox import Outbox
from facility_agent.sinks.influx import InfluxSink
from facility_agent.sinks.prometheus import PrometheusSink
from tests.fixtures.outputs import Victoria
from tests.fixtures.procs import free_port
from tests.fixtures.waiting import until

SITE = "lab1"
T0 = datetime(2026, 11, 25, 21, 0, 0, tzinfo=UTC)


def state(device: str, n: int, comm: str = "ok") -> DeviceState:
    return DeviceState(
        device=device,
        driver="nut",
        ts=T0 + timedelta(seconds=n),
        comm=comm,  # type: ignore[arg-type]
        status=("OB", "DISCHRG") if n % 2 else ("OL",),
        metrics={"battery.charge": 100 - n, "input.voltage": 230.5, "ups.model": "Smart-UPS"},
    )


@pytest.fixture
async def make_influx(tmp_path: Path) -> AsyncIterator[Callable[..., InfluxSink]]:
    made: list[InfluxSink] = []

    def make(url: str, **kw: Any) -> InfluxSink:
        cfg = InfluxConfig.model_validate(
            {
                "url": url,
                "token": "s3cret-token",
                "org": "site",
                "bucket": "facility",
                "flush_interval": 0.1,
                "retry_min": 0.1,
                "retry_max": 0.5,
                **kw,
            }
        )
        sink = InfluxSink(cfg, SITE, Outbox(tmp_path / "outbox.sqlite"))
        made.append(sink)
        return sink

    yield make
    for sink in made:
        await sink.stop(timeout=1)


async def test_readings_and_events_read_back_from_victoriametrics(
    victoria: Victoria, make_influx: Callable[..., InfluxSink]
) -> None:
    sink = make_influx(victoria.url)
    await sink.start()
    for n in range(20):
        sink.publish_state(state("ups-a", n))
    sink.publish_event(
        Event(SITE, "ups-a", "power.on_battery", Severity.CRITICAL, "ups-a is on battery", ts=T0)
    )
    await until(lambda: sink.stats()["sent"] == 21, 15, "21 lines written")
    assert sink.stats()["queued"] == 0
    series = await asyncio.to_thread(victoria.export, '{__name__=~"facility.*"}')
    by_name = {s["metric"]["__name__"]: s for s in series}
    charge = by_name["facility_battery_charge"]
    assert charge["metric"] == {
        "__name__": "facility_battery_charge",
        "site": "lab1",
        "device": "ups-a",
        "driver": "nut",
    }
    assert charge["values"] == [float(100 - n) for n in range(20)]
    # original timestamps, not the time of writing
    start_ms = int(T0.timestamp() * 1000)
    assert charge["timestamps"] == [start_ms + 1000 * n for n in range(20)]
    assert by_name["facility_input_voltage"]["values"] == [230.5] * 20
    assert by_name["facility_comm_ok"]["values"] == [1.0] * 20
    assert "facility_ups_model_str" in by_name  # a string field (VictoriaMetrics stores it as 0)
    event = by_name["facility_event_count"]
    assert event["metric"]["type"] == "power.on_battery" and event["values"] == [1.0]


async def test_database_outage_keeps_everything_and_catches_up(
    tmp_path: Path, make_influx: Callable[..., InfluxSink], caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "vm"
    root.mkdir()
    vm = Victoria(root, free_port())  # not started yet: the database is away
    sink = make_influx(vm.url)
    await sink.start()
    for n in range(50):
        sink.publish_state(state("ups-b", n))
    await until(lambda: sink.stats()["failed"] >= 2, 15, "failed writes")
    assert sink.stats()["queued"] == 50
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "retrying with backoff" in messages and "s3cret-token" not in messages
    await asyncio.to_thread(vm.start)
    try:
        await until(lambda: sink.stats()["sent"] == 50, 20, "the backlog written")
        series = await asyncio.to_thread(vm.export, 'facility_battery_charge{device="ups-b"}')
        assert series[0]["values"] == [float(100 - n) for n in range(50)]
    finally:
        vm.stop()


class _Picky(BaseHTTPRequestHandler):
    """An InfluxDB-like endpoint that answers 400 to any batch holding the word `poison`
    (VictoriaMetrics accepts anything, so a real 4xx needs this stand-in)."""

    accepted: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if b"poison" in body:
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"code":"invalid","message":"unable to parse points"}')
            return
        type(self).accepted.extend(body.splitlines())
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_a_bad_point_is_set_aside_and_the_rest_flows(
    make_influx: Callable[..., InfluxSink], caplog: pytest.LogCaptureFixture
) -> None:
    _Picky.accepted = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Picky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = make_influx(f"http://127.0.0.1:{server.server_port}", flush_interval=0.5)
        await sink.start()
        for n in range(10):
            sink.publish_state(state("ups-a", n))
        sink.outbox.put("influx", "reading", "", b"poison,site=x value=1", None)
        for n in range(10, 20):
            sink.publish_state(state("ups-a", n))
        await until(lambda: sink.stats()["sent"] == 20, 15, "the good lines")
        assert sink.stats()["set_aside"] == 1 and sink.stats()["queued"] == 0
        assert len(_Picky.accepted) == 20
        await sink.outbox.flush()
        aside = sink.outbox.set_aside_rows("influx")
        assert [(r.payload, reason[:8]) for r, reason in aside] == [
            (b"poison,site=x value=1", "HTTP 400")
        ]
        assert any("set aside" in r.getMessage() for r in caplog.records)
    finally:
        server.shutdown()
        server.server_close()


async def test_metrics_parse_back_and_healthz(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    await box.open()
    box.put("mqtt", "event", "t", b"x", None)
    await box.flush()

    class FakeOutput(Sink):
        name = "mqtt"

        @property
        def connected(self) -> bool:
            return True

        def stats(self) -> dict[str, int]:
            return {"sent": 12, "queued": 3}

        async def start(self) -> None: ...

        def publish_state(self, state: DeviceState) -> None: ...

        def publish_event(self, event: Event) -> None: ...

        async def stop(self, timeout: float = 5.0) -> None: ...

    sink = PrometheusSink(
        PrometheusConfig(listen="127.0.0.1:0"), SITE, sinks=[FakeOutput()], outbox=box
    )
    await sink.start()
    try:
        sink.publish_state(state("ups-a", 1))
        sink.publish_state(state("ups-b", 2, comm="lost"))
        sink.publish_event(
            Event(SITE, "ups-a", "power.on_battery", Severity.CRITICAL, "on battery")
        )
        base = f"http://127.0.0.1:{sink.port}"
        text = (await asyncio.to_thread(requests.get, base + "/metrics", timeout=5)).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

        def get(metric: str, /, **labels: str) -> float:
            return samples[(metric, tuple(sorted(labels.items())))]

        dev = {"site": "lab1", "driver": "nut"}
        assert get("facility_battery_charge", device="ups-a", **dev) == 99.0
        assert get("facility_battery_charge", device="ups-b", **dev) == 98.0
        assert get("facility_comm_ok", device="ups-a", **dev) == 1.0
        assert get("facility_comm_ok", device="ups-b", **dev) == 0.0
        assert get("facility_status", device="ups-a", flag="OB", **dev) == 1.0
        assert get("facility_info", device="ups-a", name="ups.model", value="Smart-UPS", **dev)
        assert (
            get(
                "facility_agent_events_total",
                site="lab1",
                type="power.on_battery",
                severity="critical",
            )
            == 1.0
        )
        assert get("facility_agent_output_sent_total", output="mqtt") == 12.0
        assert get("facility_agent_output_queued", output="mqtt") == 3.0
        assert get("facility_agent_output_connected", output="mqtt") == 1.0
        assert get("facility_agent_outbox_rows", output="mqtt") == 1.0
        health = await asyncio.to_thread(requests.get, base + "/healthz", timeout=5)
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok" and body["outputs"]["mqtt"]["connected"] is True
        assert body["outbox"]["rows"] == 1
        missing = await asyncio.to_thread(requests.get, base + "/nope", timeout=5)
        assert missing.status_code == 404
        sink._tick -= 60  # as if the event loop had been stuck for a minute
        stalled = await asyncio.to_thread(requests.get, base + "/healthz", timeout=5)
        assert stalled.status_code == 503 and stalled.json()["status"] == "stalled"
    finally:
        await sink.stop()
        await box.close()


def test_prometheus_listens_on_loopback_by_default() -> None:
    cfg = PrometheusConfig()
    assert (cfg.host, cfg.port) == ("127.0.0.1", 9847)
    with pytest.raises(ValueError, match="HOST:PORT"):
        PrometheusConfig(listen="9847")


async def test_back_as_soon_as_the_database_is(
    tmp_path: Path, make_influx: Callable[..., InfluxSink]
) -> None:
    """With the default backoff (1 s doubled up to 60 s), what was queued while the database
    was away is written within seconds of its return (the port is probed between retries)."""
    root = tmp_path / "vm"
    root.mkdir()
    vm = Victoria(root, free_port())
    await asyncio.to_thread(vm.start)
    sink = make_influx(vm.url, retry_min=1, retry_max=60)
    await sink.start()
    try:
        sink.publish_state(state("ups-c", 0))
        await until(lambda: sink.stats()["sent"] == 1, 10, "the first write")
        await asyncio.to_thread(vm.stop)
        for n in range(1, 21):
            sink.publish_state(state("ups-c", n))
            await asyncio.sleep(1.0)
        assert sink.stats()["failed"] >= 3  # it did retry, with backoff, meanwhile
        await asyncio.to_thread(vm.start)  # returns once /health answers
        back = time.monotonic()
        await until(lambda: sink.stats()["sent"] == 21, 60, "the backlog written")
        took = time.monotonic() - back
        print(f"database down 20 s: backlog written {took:.2f} s after its return")
        assert took <= 3.0
        series = await asyncio.to_thread(vm.export, 'facility_battery_charge{device="ups-c"}')
        assert series[0]["values"] == [float(100 - n) for n in range(21)]  # all, in order
    finally:
        vm.stop()
