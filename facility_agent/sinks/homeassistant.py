"""Home Assistant MQTT discovery: one device per device, one entity per live reading.

Home Assistant shows every UPS, PDU and server as a device, reading values straight from our
retained `P/{device}/state` (a `value_template` picks the metric). What a device says about
itself and does not change (`device.mfr`, `ups.model`, `ups.firmware`, `driver.version` ...)
goes into its device-registry entry (manufacturer, model, sw_version), not into
entities; settings (`*.nominal`, `battery.charge.low`, `ups.delay.*` ...) are left out; only live
readings become sensors, with a human name ("Battery charge"), and, from the metric's NUT name,
the `device_class`, `state_class` and unit Home Assistant accepts for that class.

Availability is per agent *and* per device (`availability_mode: all`): the agent's last will
(`P/agent/status` = `offline`) and the device's own `comm` in its state, so a device that stops
answering shows as unavailable instead of its last values. The `comm` sensor itself only
follows the agent, so it can say "disconnected".

The keys are the full names from Home Assistant's MQTT discovery schema (components/mqtt:
sensor.py, binary_sensor.py, mixins.py device and availability schemas). Nothing here talks to
a network: the MQTT sink publishes what these functions return.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any

import orjson

from facility_agent import __version__
from facility_agent.core.model import DeviceState

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
    "generator.fuel.level": (None, "%"),
}
#: Device classes whose readings only grow (Home Assistant wants `total_increasing` there).
_TOTALS = frozenset({"energy"})

#: Static facts -> the device-registry field they fill (first match wins per field). No
#: `serial_number`: Home Assistant 2024.1's device schema refuses it (the whole config).
_REGISTRY: tuple[tuple[str, str], ...] = (
    ("device.mfr", "manufacturer"),
    ("ups.mfr", "manufacturer"),
    ("device.model", "model"),
    ("ups.model", "model"),
    ("device.firmware", "sw_version"),
    ("ups.firmware", "sw_version"),
    ("driver.version", "sw_version"),
    ("ups.firmware.aux", "hw_version"),
)
#: Text metrics that are live readings, not facts about the device.
_LIVE_TEXT = frozenset(
    {"generator.state", "ats.source", "ups.beeper.status", "ups.test.result", "battery.status"}
)
#: Settings and facts: never an entity (fnmatch patterns).
_NOT_LIVE = (
    "device.*",
    "driver.*",
    "*.nominal",
    "*.low",
    "*.high",
    "*.warning",
    "*.critical",
    "*.mfr",
    "*.mfr.*",
    "*.model",
    "*.serial",
    "*.firmware",
    "*.firmware.*",
    "*.type",
    "*.date",
    "*.id",
    "*.productid",
    "*.vendorid",
    "ups.delay.*",
    "ups.timer.*",
    "input.transfer.*",
    "input.sensitivity",
    "outlet.*.desc",
    "outlet.*.name",
)
#: Words kept as written in entity names.
_WORDS = {"ups": "UPS", "ats": "ATS", "pdu": "PDU", "realpower": "real power", "psu": "PSU"}
#: Names that read better than their words.
_NAMES = {
    "battery.charge": "Battery charge",
    "battery.runtime": "Battery runtime",
    "ups.load": "Load",
    "ups.realpower": "Real power",
    "ups.power": "Apparent power",
    "ups.temperature": "Temperature",
}
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")


def _object_id(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_").lower()


def classify(metric: str) -> tuple[str | None, str | None]:
    """(device_class, unit) for a metric name, as Home Assistant expects them."""
    if metric in _BY_NAME:
        return _BY_NAME[metric]
    return _BY_SUFFIX.get(metric.rsplit(".", 1)[-1], (None, None))


def human_name(metric: str) -> str:
    """`input.voltage` -> "Input voltage", `outlet.1.current` -> "Outlet 1 current"."""
    if metric in _NAMES:
        return _NAMES[metric]
    words = [_WORDS.get(w, w) for w in re.split(r"[._]+", metric) if w]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def is_live(metric: str, value: Any) -> bool:
    """A reading that changes (an entity), rather than a fact or a setting."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str) and metric not in _LIVE_TEXT:
        return False
    return not any(fnmatchcase(metric, pattern) for pattern in _NOT_LIVE)


def registry_entry(state: DeviceState, site: str, node: str) -> dict[str, Any]:
    """The device block: identity plus what the device says about itself."""
    block: dict[str, Any] = {
        "identifiers": [f"facility_agent_{node}"],
        "name": f"{state.device} ({site})",
        "manufacturer": "facility-agent",
        "model": f"{state.driver} device",
    }
    filled: set[str] = set()
    for metric, field in _REGISTRY:
        value = state.metrics.get(metric)
        if field in filled or value is None or isinstance(value, bool):
            continue
        text = str(value).strip()
        if text:
            block[field] = text
            filled.add(field)
    return block


def discovery_messages(
    state: DeviceState,
    *,
    site: str,
    mqtt_prefix: str,
    ha_prefix: str,
    known: set[str],
) -> list[tuple[str, bytes]]:
    """Config messages for what in `state` is not announced yet (recorded in `known`).

    Per device: a `comm` binary sensor (connectivity) and an `on battery` binary sensor for
    power devices; per live reading: a sensor. When the device's registry entry changes (its
    model arrived with a later poll), every config of that device is sent again with it.
    """
    p = f"{mqtt_prefix}/{site}"
    node = _object_id(f"{site}_{state.device}")
    device_block = registry_entry(state, site, node)
    marker = f"registry/{node}/" + orjson.dumps(device_block, option=orjson.OPT_SORT_KEYS).decode()
    if marker not in known:
        # New, or its registry entry changed: forget what was announced with the old one.
        known.difference_update({k for k in known if k.split("/")[1:2] == [node]})
        known.add(marker)
    state_topic = f"{p}/{state.device}/state"
    agent = {
        "topic": f"{p}/agent/status",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    device_up = {
        "topic": state_topic,
        "value_template": "{{ 'online' if value_json.comm == 'ok' else 'offline' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    origin = {
        "name": "facility-agent",
        "sw_version": __version__,
        "support_url": "https://github.com/facility-agent/facility-agent",
    }
    out: list[tuple[str, bytes]] = []

    def add(
        component: str, object_id: str, config: dict[str, Any], *, per_device: bool = True
    ) -> None:
        key = f"{component}/{node}/{object_id}"
        if key in known:
            return
        known.add(key)
        body = {
            **config,
            "state_topic": state_topic,
            "availability": [agent, device_up] if per_device else [agent],
            "availability_mode": "all",
            "device": device_block,
            "origin": origin,
            "unique_id": f"facility_agent_{node}_{object_id}",
        }
        out.append((f"{ha_prefix}/{key}/config", orjson.dumps(body)))

    add(
        "binary_sensor",
        "comm",
        {
            "name": "Communication",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "value_template": "{{ 'ON' if value_json.comm == 'ok' else 'OFF' }}",
        },
        per_device=False,
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
        if not is_live(metric, value):
            continue
        key = orjson.dumps(metric).decode()
        config: dict[str, Any] = {"name": human_name(metric)}
        if isinstance(value, int | float):
            device_class, unit = classify(metric)
            # A reading missing from one poll renders "None": Home Assistant shows it as unknown.
            config["value_template"] = "{{ value_json.metrics.get(" + key + ") }}"
            config["state_class"] = "total_increasing" if device_class in _TOTALS else "measurement"
            if device_class:
                config["device_class"] = device_class
            if unit:
                config["unit_of_measurement"] = unit
            config["suggested_display_precision"] = 0 if isinstance(value, int) else 1
        else:
            config["value_template"] = "{{ value_json.metrics.get(" + key + ") }}"
        add("sensor", _object_id(metric), config)
    return out
