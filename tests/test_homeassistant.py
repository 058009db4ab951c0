"""Home Assistant MQTT discovery against a real Mosquitto: retained configs a late subscriber
(Home Assistant starting after us) receives, with unique ids, a device block and availability."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson

from facility_agent.config import MqttConfig
from facility_agent.model import DeviceState
from facility_agent.outbox import Outbox
from facility_agent.sinks.homeassistant import classify
from facility_agent.sinks.mqtt import MqttSink
from tests.fixtures.mosquitto import Broker, retained


def test_classes_and_units() -> None:
    assert classify("battery.charge") == ("battery", "%")
    assert classify("input.voltage") == ("voltage", "V")
    assert classify("outlet.1.current") == ("current", "A")
    assert classify("battery.runtime") == ("duration", "s")
    assert classify("ups.temperature") == ("temperature", "°C")
    assert classify("ups.firmware") == (None, None)


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
        # 5 configs (comm, on_battery, 3 sensors) + 2 states
        assert sink.stats()["sent"] == 7
        got = await asyncio.to_thread(
            retained, mosquitto_broker, "homeassistant/sensor/lab1_ups-a/battery_charge/config"
        )
        assert got is not None and got.retain
        body = orjson.loads(got.payload)
        assert body["unique_id"] == "facility_agent_lab1_ups-a_battery_charge"
        assert body["device_class"] == "battery" and body["unit_of_measurement"] == "%"
        assert body["state_topic"] == "facility/lab1/ups-a/state"
        assert body["value_template"] == '{{ value_json.metrics["battery.charge"] }}'
        assert body["availability_topic"] == "facility/lab1/agent/status"
        assert body["device"]["identifiers"] == ["facility_agent_lab1_ups-a"]
        model = await asyncio.to_thread(
            retained, mosquitto_broker, "homeassistant/sensor/lab1_ups-a/ups_model/config"
        )
        assert model is not None and "state_class" not in orjson.loads(model.payload)
        comm = await asyncio.to_thread(
            retained, mosquitto_broker, "homeassistant/binary_sensor/lab1_ups-a/comm/config"
        )
        assert comm is not None and orjson.loads(comm.payload)["device_class"] == "connectivity"
    finally:
        await sink.stop(timeout=2)
