"""Home Assistant MQTT discovery: configs built from a real poll of the simulated UPS over NUT,
checked against Home Assistant's MQTT discovery schema (as its components/mqtt sensor.py,
binary_sensor.py and mixins.py define it: the keys, the device and availability blocks, the
device classes with the units each accepts, the state classes), and retained on a real
Mosquitto for a late subscriber."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from facility_agent.config.site import MqttConfig
from facility_agent.core.model import DeviceState
from facility_agent.core.registry import driver_classes
from facility_agent.outbox import Outbox
from facility_agent.simulators.serve import RunningSimulator
from facility_agent.sinks.homeassistant import classify, discovery_messages, human_name, is_live
from facility_agent.sinks.mqtt import MqttSink
from tests.fixtures.mosquitto import Broker, retained

# -- Home Assistant's MQTT discovery schema, the parts these configs use ----------------------

#: Keys of the sensor / binary_sensor platform schemas and the MQTT entity mixins.
ENTITY_KEYS = {
    "name", "unique_id", "object_id", "state_topic", "value_template", "device_class",
    "entity_category", "enabled_by_default", "icon", "qos", "encoding", "expire_after",
    "force_update", "json_attributes_topic", "json_attributes_template", "availability",
    "availability_mode", "availability_topic", "availability_template", "payload_available",
    "payload_not_available", "device", "origin", "entity_picture",
}  # fmt: skip
SENSOR_KEYS = ENTITY_KEYS | {
    "unit_of_measurement", "state_class", "suggested_display_precision",
    "last_reset_value_template", "options",
}  # fmt: skip
BINARY_SENSOR_KEYS = ENTITY_KEYS | {"payload_on", "payload_off", "off_delay"}
DEVICE_KEYS = {
    "identifiers",
    "connections",
    "name",
    "manufacturer",
    "model",
    "sw_version",
    "hw_version",
    "suggested_area",
    "via_device",
    "configuration_url",
}  # fmt: skip  (no serial_number: Home Assistant 2024.1 refuses the config with it)
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
#: SensorDeviceClass -> the units Home Assistant accepts for it (DEVICE_CLASS_UNITS).
SENSOR_CLASS_UNITS: dict[str, set[str]] = {
    "apparent_power": {"VA"},
    "battery": {"%"},
    "current": {"A", "mA"},
    "duration": {"d", "h", "min", "s", "ms"},
    "energy": {"Wh", "kWh", "MWh", "GJ", "MJ"},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "humidity": {"%"},
    "power": {"W", "kW"},
    "temperature": {"°C", "°F", "K"},
    "voltage": {"V", "mV"},
}
BINARY_CLASSES = {"connectivity", "problem", "power", "battery", "plug", "running"}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
ENTITY_CATEGORIES = {"config", "diagnostic"}


def schema_problems(component: str, body: dict[str, Any]) -> list[str]:
    """What Home Assistant's discovery schema would refuse (or warn about) in one config."""
    keys = SENSOR_KEYS if component == "sensor" else BINARY_SENSOR_KEYS
    out = [f"unknown key {k}" for k in set(body) - keys]
    for key in ("name", "unique_id", "state_topic", "value_template"):
        if not isinstance(body.get(key), str) or not body[key]:
            out.append(f"{key} must be a non-empty string")
    if "availability" in body and "availability_topic" in body:
        out.append("availability and availability_topic are exclusive")
    for item in body.get("availability", []):
        out += [f"availability: unknown key {k}" for k in set(item) - AVAILABILITY_KEYS]
        if "topic" not in item:
            out.append("availability: topic is required")
    if body.get("availability_mode", "latest") not in {"all", "any", "latest"}:
        out.append("availability_mode must be all, any or latest")
    device = body.get("device", {})
    out += [f"device: unknown key {k}" for k in set(device) - DEVICE_KEYS]
    if not device.get("identifiers") and not device.get("connections"):
        out.append("device needs identifiers or connections")
    out += [f"origin: unknown key {k}" for k in set(body.get("origin", {})) - ORIGIN_KEYS]
    if "origin" in body and "name" not in body["origin"]:
        out.append("origin: name is required")
    if body.get("entity_category", "diagnostic") not in ENTITY_CATEGORIES:
        out.append("entity_category must be config or diagnostic")
    dc = body.get("device_class")
    if component == "binary_sensor":
        if dc is not None and dc not in BINARY_CLASSES:
            out.append(f"binary_sensor device_class {dc!r}")
        return out
    unit = body.get("unit_of_measurement")
    if dc is not None:
        if dc not in SENSOR_CLASS_UNITS:
            out.append(f"sensor device_class {dc!r}")
        elif unit not in SENSOR_CLASS_UNITS[dc]:
            out.append(f"unit {unit!r} is not one of device_class {dc}: {SENSOR_CLASS_UNITS[dc]}")
    state_class = body.get("state_class")
    if state_class is not None and state_class not in STATE_CLASSES:
        out.append(f"state_class {state_class!r}")
    if dc == "energy" and state_class == "measurement":
        out.append("energy sensors need state_class total or total_increasing")
    if state_class is None and (dc is not None or unit is not None):
        out.append("a reading with a unit or device class should have a state_class")
    return out


def test_the_schema_check_has_teeth() -> None:
    good = {
        "name": "Battery charge",
        "unique_id": "u",
        "state_topic": "t",
        "value_template": "{{ 1 }}",
        "device": {"identifiers": ["x"]},
        "device_class": "battery",
        "unit_of_measurement": "%",
        "state_class": "measurement",
    }
    assert schema_problems("sensor", good) == []
    assert schema_problems("sensor", {**good, "unit_of_measurement": "V"})
    assert schema_problems("sensor", {**good, "device_class": "energy", "unit": "kWh"})
    assert schema_problems("sensor", {**good, "availability_topic": "a", "availability": []})
    assert schema_problems("sensor", {**good, "device": {"identifiers": ["x"], "mfr": "A"}})
    assert schema_problems(
        "sensor", {**good, "device": {"identifiers": ["x"], "serial_number": "1"}}
    )


# -- the configs --------------------------------------------------------------------------------


def test_classes_units_names_and_what_is_live() -> None:
    assert classify("battery.charge") == ("battery", "%")
    assert classify("input.voltage") == ("voltage", "V")
    assert classify("outlet.1.current") == ("current", "A")
    assert classify("battery.runtime") == ("duration", "s")
    assert classify("ups.temperature") == ("temperature", "°C")
    assert classify("ups.firmware") == (None, None)
    assert human_name("battery.charge") == "Battery charge"
    assert human_name("outlet.1.current") == "Outlet 1 current"
    assert human_name("input.voltage") == "Input voltage"
    assert is_live("battery.charge", 100) and is_live("generator.state", "running")
    for metric, value in (
        ("device.mfr", "APC"),
        ("driver.version", "2.8.1"),
        ("ups.firmware", "UPS 09.3"),
        ("input.voltage.nominal", 230),
        ("battery.charge.low", 10),
        ("ups.delay.shutdown", 20),
        ("ups.model", "Smart-UPS"),
    ):
        assert not is_live(metric, value), metric


async def poll_simulated_ups(sim: RunningSimulator, ups: str) -> DeviceState:
    model = driver_classes()["nut"].config_model
    cfg = model.model_validate(
        {"id": ups, "driver": "nut", "host": "127.0.0.1", "port": sim.nut_port, "ups": ups}
    )
    driver = driver_classes()["nut"](cfg)
    try:
        sample = await driver.poll()
    finally:
        await driver.close()
    return DeviceState(ups, "nut", datetime.now(UTC), "ok", sample.status, sample.metrics)


async def test_a_polled_ups_is_one_device_with_live_entities_that_fit_the_schema(
    nut_simulator: RunningSimulator,
) -> None:
    state = await poll_simulated_ups(nut_simulator, "ups-a")
    known: set[str] = set()
    msgs = discovery_messages(
        state, site="lab1", mqtt_prefix="facility", ha_prefix="homeassistant", known=known
    )
    bodies = {topic: orjson.loads(payload) for topic, payload in msgs}
    problems = [
        f"{topic}: {p}"
        for topic, body in bodies.items()
        for p in schema_problems(topic.split("/")[1], body)
    ]
    assert not problems, problems
    # Static facts are the device's registry entry, not entities; settings are left out.
    static = [m for m, v in state.metrics.items() if isinstance(v, str)]
    assert "device.mfr" in state.metrics and "driver.version" in state.metrics
    entity_ids = {t.split("/")[3] for t in bodies}
    assert "device_mfr" not in entity_ids and "driver_version" not in entity_ids
    assert not any(i.endswith(("_nominal", "_low", "_high")) for i in entity_ids), entity_ids
    assert len(msgs) < len(state.metrics) / 1.5, (len(msgs), len(state.metrics), static)
    device = next(iter(bodies.values()))["device"]
    assert device["manufacturer"] == state.metrics["device.mfr"]
    assert device["model"] == state.metrics["device.model"]
    assert "sw_version" in device and device["identifiers"] == ["facility_agent_lab1_ups-a"]
    assert all(body["device"] == device for body in bodies.values())
    charge = bodies["homeassistant/sensor/lab1_ups-a/battery_charge/config"]
    assert charge["name"] == "Battery charge" and charge["device_class"] == "battery"
    assert charge["state_class"] == "measurement" and charge["unit_of_measurement"] == "%"
    runtime = bodies["homeassistant/sensor/lab1_ups-a/battery_runtime/config"]
    assert runtime["device_class"] == "duration" and runtime["unit_of_measurement"] == "s"
    # Unavailable when the agent is gone AND when this device stops answering.
    assert charge["availability_mode"] == "all"
    topics = [a["topic"] for a in charge["availability"]]
    assert topics == ["facility/lab1/agent/status", "facility/lab1/ups-a/state"]
    assert "value_json.comm == 'ok'" in charge["availability"][1]["value_template"]
    comm = bodies["homeassistant/binary_sensor/lab1_ups-a/comm/config"]
    assert [a["topic"] for a in comm["availability"]] == ["facility/lab1/agent/status"]
    # Nothing new on the next poll; a changed registry entry re-announces the device.
    again = discovery_messages(
        state, site="lab1", mqtt_prefix="facility", ha_prefix="homeassistant", known=known
    )
    assert again == []
    newer = DeviceState(
        state.device, "nut", state.ts, "ok", state.status,
        {**state.metrics, "ups.firmware": "2.0"},
    )  # fmt: skip
    fresh = discovery_messages(
        newer, site="lab1", mqtt_prefix="facility", ha_prefix="homeassistant", known=known
    )
    assert len(fresh) == len(msgs)
    assert orjson.loads(fresh[0][1])["device"]["sw_version"] == "2.0"


async def test_discovery_configs_are_retained_once(
    mosquitto_broker: Broker, tmp_path: Path
) -> None:
    cfg = MqttConfig.model_validate(
        {
            "host": mosquitto_broker.host,
            "port": mosquitto_broker.port,
            "homeassistant": {"enabled": True},
        }
    )
    sink = MqttSink(cfg, "lab1", Outbox(tmp_path / "o.sqlite"))
    await sink.start()
    try:
        st = DeviceState(
            "ups-a",
            "nut",
            datetime.now(UTC),
            "ok",
            ("OL",),
            {"battery.charge": 100, "input.voltage": 230.1, "ups.model": "Smart-UPS"},
        )
        sink.publish_state(st)
        sink.publish_state(st)  # nothing new to announce the second time
        assert await sink.wait_idle(10)
        # 4 configs (comm, on_battery, 2 sensors: ups.model is the device's model) + 2 states
        assert sink.stats()["sent"] == 6
        got = await asyncio.to_thread(
            retained, mosquitto_broker, "homeassistant/sensor/lab1_ups-a/battery_charge/config"
        )
        assert got is not None and got.retain
        body = orjson.loads(got.payload)
        assert body["unique_id"] == "facility_agent_lab1_ups-a_battery_charge"
        assert body["device_class"] == "battery" and body["unit_of_measurement"] == "%"
        assert body["state_topic"] == "facility/lab1/ups-a/state"
        assert body["value_template"] == '{{ value_json.metrics.get("battery.charge") }}'
        assert body["availability"][0]["topic"] == "facility/lab1/agent/status"
        assert body["device"]["identifiers"] == ["facility_agent_lab1_ups-a"]
        assert body["device"]["model"] == "Smart-UPS"
        model = await asyncio.to_thread(
            retained, mosquitto_broker, "homeassistant/sensor/lab1_ups-a/ups_model/config", wait=1
        )
        assert model is None
        comm = await asyncio.to_thread(
            retained, mosquitto_broker, "homeassistant/binary_sensor/lab1_ups-a/comm/config"
        )
        assert comm is not None and orjson.loads(comm.payload)["device_class"] == "connectivity"
    finally:
        await sink.stop(timeout=2)
