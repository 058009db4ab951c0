"""Home Assistant MQTT discovery: one retained config message per metric of each device.

Home Assistant then shows every UPS, PDU and server as a device with its sensors, reading the
values straight from our retained `P/{device}/state` (a `value_template` picks the metric), and
marks them unavailable when the agent's last will sets `P/agent/status` to `offline`. Nothing
here talks to a network: the MQTT sink publishes what these functions return.

Units and device classes come from the metric's NUT name (the last dotted part), which is
enough for every name the contract lists; a metric we cannot classify is still published,
without a device class.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..model import DeviceState

#: Last part of a NUT-style name -> (device_class, unit); None = no class.
_BY_SUFFIX: dict[str, tuple[str | None, str | None]] = {
    "voltage": ("voltage", "V"),
    "current": ("current", "A"),
    "frequency": ("frequency", "Hz"),
    "realpower": ("power", "W"),
    "power": ("apparent_power", "VA"),
    "temperature": ("temperature", "°C"),
    "humidity": ("humidity", "%"),
    "runtime": ("duration", "s"),
    "load": (None, "%"),
    "energy": ("energy", "kWh"),
}
#: Exact names that need something else than their suffix says.
_BY_NAME: dict[str, tuple[str | None, str | None]] = {
    "battery.charge": ("battery", "%"),
    "battery.charge.low": ("battery", "%"),
    "battery.runtime.low": ("duration", "s"),
    "ups.load": (None, "%"),
    "ups.realpower": ("power", "W"),
    "ups.power": ("apparent_power", "VA"),
}
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")


def _object_id(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_").lower()


def classify(metric: str) -> tuple[str | None, str | None]:
    """(device_class, unit) for a metric name, as Home Assistant expects them."""
    if metric in _BY_NAME:
        return _BY_NAME[metric]
    return _BY_SUFFIX.get(metric.rsplit(".", 1)[-1], (None, None))


def discovery_messages(
    state: DeviceState,
    *,
    site: str,
    mqtt_prefix: str,
    ha_prefix: str,
    known: set[str],
) -> list[tuple[str, bytes]]:
    """Config messages for what in `state` is not in `known` yet (and adds it there).

    Per device: a `comm` binary sensor (connectivity) and an `on battery` binary sensor for
    power devices; per metric: a sensor (numbers get `state_class: measurement`).
    """
    p = f"{mqtt_prefix}/{site}"
    node = _object_id(f"{site}_{state.device}")
    device_block: dict[str, Any] = {
        "identifiers": [f"facility_agent_{node}"],
        "name": f"{state.device} ({site})",
        "model": state.driver,
        "manufacturer": "facility-agent",
    }
    common: dict[str, Any] = {
        "state_topic": f"{p}/{state.device}/state",
        "availability_topic": f"{p}/agent/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device_block,
    }
    out: list[tuple[str, bytes]] = []

    def add(component: str, object_id: str, config: dict[str, Any]) -> None:
        key = f"{component}/{node}/{object_id}"
        if key in known:
            return
        known.add(key)
        body = {**config, **common, "unique_id": f"facility_agent_{node}_{object_id}"}
        out.append((f"{ha_prefix}/{key}/config", orjson.dumps(body)))

    add(
        "binary_sensor",
        "comm",
        {
            "name": "Communication",
            "device_class": "connectivity",
            "value_template": "{{ 'ON' if value_json.comm == 'ok' else 'OFF' }}",
        },
    )
    if any(flag in state.status for flag in ("OL", "OB")):
        add(
            "binary_sensor",
            "on_battery",
            {
                "name": "On battery",
                "device_class": "problem",
                "value_template": "{{ 'ON' if 'OB' in value_json.status else 'OFF' }}",
            },
        )
    for metric, value in state.metrics.items():
        device_class, unit = classify(metric)
        config: dict[str, Any] = {
            "name": metric,
            "value_template": "{{ value_json.metrics[" + orjson.dumps(metric).decode() + "] }}",
        }
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric:
            config["state_class"] = "measurement"
            if device_class:
                config["device_class"] = device_class
            if unit:
                config["unit_of_measurement"] = unit
        add("sensor", _object_id(metric), config)
    return out
