"""A read-only MQTT subscriber that turns the agent's topics back into plain data.

The demo and `status`-style tools look at the site the way any consumer would, through the
broker, so what they show is what was really published.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass
class Received:
    topic: str
    payload: Any
    retained: bool
    at: float = field(default_factory=time.monotonic)


@dataclass
class SiteView:
    """What the topics of one site say right now."""

    agent_status: str | None = None
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[Received] = field(default_factory=list)
    messages: int = 0


class MqttWatcher:
    def __init__(self, host: str, port: int, prefix: str, site: str) -> None:
        self.base = f"{prefix}/{site}"
        self.view = SiteView()
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribed = asyncio.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"facility-agent-watch-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    async def start(self, timeout: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    async def stop(self) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(f"{self.base}/#", qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._subscribed.set)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received = Received(msg.topic, msg.payload, bool(msg.retain))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._take, received)

    def _take(self, rec: Received) -> None:
        view = self.view
        view.messages += 1
        rest = rec.topic[len(self.base) + 1 :]
        if rest == "agent/status":
            view.agent_status = bytes(rec.payload).decode(errors="replace")
            return
        try:
            rec.payload = orjson.loads(rec.payload)
        except orjson.JSONDecodeError:
            return
        if rest == "events":
            view.events.append(rec)
        elif rest.endswith("/state") and isinstance(rec.payload, dict):
            view.states[rest[: -len("/state")]] = rec.payload
