"""Builds the outputs a site file asks for, around one shared outbox.

Order matters only for /metrics: the Prometheus sink is built last so that it can report on the
others. With `outbox: {enabled: false}` MQTT keeps its in-memory queue and the other pushed
outputs use an in-memory SQLite outbox (same code path, nothing survives a restart).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facility_agent.outbox import Outbox

if TYPE_CHECKING:
    from facility_agent.config.site import SiteConfig
    from facility_agent.core.sink import Sink

log = logging.getLogger(__name__)


def make_outbox(config: SiteConfig) -> Outbox:
    box = config.outbox
    if not box.enabled:
        path = Path(":memory:")
    else:
        path = box.path if box.path is not None else config.state_path() / "outbox.sqlite"
    return Outbox(path, max_bytes=box.max_bytes, max_age=box.max_age, window=box.window)


def feeds_from(topology: dict[str, list[str]]) -> dict[str, list[str]]:
    """`topology:` says what each device is fed by; alert inhibition wants what each feeds."""
    feeds: dict[str, list[str]] = {}
    for device, sources in topology.items():
        for source in sources:
            feeds.setdefault(source, []).append(device)
    return feeds


def build_outputs(config: SiteConfig) -> list[Sink]:
    """MQTT, InfluxDB, chat alerts and Prometheus, as configured."""
    sinks: list[Any] = []
    outbox: Outbox | None = None

    def shared() -> Outbox:
        nonlocal outbox
        if outbox is None:
            outbox = make_outbox(config)
        return outbox

    if config.mqtt is not None:
        from facility_agent.sinks.mqtt import MqttSink

        sinks.append(
            MqttSink(config.mqtt, config.site, shared() if config.outbox.enabled else None)
        )
    if config.influxdb is not None:
        from facility_agent.sinks.influx import InfluxSink

        sinks.append(InfluxSink(config.influxdb, config.site, shared()))
    if config.notify:
        from facility_agent.sinks.notify import NotifySink

        feeds = feeds_from(config.topology)
        sinks.append(
            NotifySink(
                config.notify, config.site, shared(), feeds=feeds, state_dir=config.state_path()
            )
        )
    if config.prometheus is not None:
        from facility_agent.sinks.prometheus import PrometheusSink

        sinks.append(
            PrometheusSink(config.prometheus, config.site, sinks=list(sinks), outbox=outbox)
        )
    result: list[Sink] = sinks
    return result
