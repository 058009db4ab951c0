"""/metrics counts values that were not readings, per device and metric, over real HTTP."""

from __future__ import annotations

import asyncio
import urllib.request
from datetime import UTC, datetime

from facility_agent.config.outputs import PrometheusConfig
from facility_agent.core.model import DeviceState
from facility_agent.sinks.prometheus import PrometheusSink


def ups(unknown: tuple[str, ...], **metrics: float) -> DeviceState:
    return DeviceState(
        device="ups-a",
        driver="snmp",
        ts=datetime.now(UTC),
        comm="ok",
        status=("OL",),
        metrics=dict(metrics),
        unknown=unknown,
    )


def scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return [x for x in r.read().decode().splitlines() if "unknown" in x and x[:1] != "#"]


async def test_unknown_is_a_gauge_now_and_a_counter_of_spells() -> None:
    sink = PrometheusSink(PrometheusConfig(listen="127.0.0.1:0"), "lab1")
    await sink.start()
    try:
        sink.publish_state(ups(("battery.charge", "battery.runtime")))
        sink.publish_state(ups(("battery.charge", "battery.runtime")))  # heartbeat: no new count
        sink.publish_state(ups(("battery.charge",), **{"battery.runtime": 600}))
        sink.publish_state(ups(("battery.charge", "battery.runtime")))  # unknown again
        lines = await asyncio.to_thread(scrape, sink.port)
        labels = 'device="ups-a",metric="battery.{}",site="lab1"'
        assert f"facility_unknown_readings_total{{{labels.format('runtime')}}} 2.0" in lines
        assert f"facility_unknown_readings_total{{{labels.format('charge')}}} 1.0" in lines
        now = 'device="ups-a",driver="snmp",metric="battery.runtime",site="lab1"'
        assert f"facility_unknown{{{now}}} 1.0" in lines
        sink.publish_state(ups((), **{"battery.charge": 90, "battery.runtime": 600}))
        lines = await asyncio.to_thread(scrape, sink.port)
        assert not [x for x in lines if x.startswith("facility_unknown{")]
        assert f"facility_unknown_readings_total{{{labels.format('runtime')}}} 2.0" in lines
    finally:
        await sink.stop()
