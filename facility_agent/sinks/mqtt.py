"""The MQTT output: `P/agent/status`, `P/{device}/state` and `P/events`, as CONTRACT.md promises.

paho-mqtt runs its own network thread (`loop_start`) and reconnects with exponential backoff.
That backoff is right for a broker that accepts the TCP connection and then refuses or drops
us, but wrong for one that is simply down: doubled to `reconnect_max` (30 s), the next try fell
up to 30 s after the broker was back. So when a connection attempt fails, the sink probes the
port itself; if nothing listens there (the broker is down, not refusing us), the backoff is reset
and paho tries again within `min(reconnect_min, 1 s)`: two refused SYNs a second (the attempt and
the probe) while the broker is away, and delivery within about a second of its return, after an
outage of any length.
On top of it this sink keeps its own ordered in-memory queue so that nothing published while the
broker is away is lost (up to `queue_limit`, oldest dropped first) and everything is re-sent in
order after a reconnect.

What paho 2.2 does by itself (read in paho/mqtt/client.py), and why we take it over:

* `publish()` of a QoS>0 message always stores it in `Client._out_messages`, even when not
  connected (rc MQTT_ERR_NO_CONN, state `mqtt_ms_publish`); the message stays there until its
  PUBACK arrives (`_do_on_publish` pops it).
* On every reconnect, `reconnect()` runs `_messages_reconnect_reset_out()`, which marks every
  unacknowledged QoS1 message for re-sending (dup flag set), and `_handle_connack()` re-sends them
  right after `on_connect` returns - also with `clean_session=True`.
* So if we both kept our own queue and let paho keep its own, a message lost in flight would be
  sent twice after a reconnect (once by paho, once by us), and paho's copy is unbounded.

Therefore `on_connect` (which paho calls on its thread before that re-send loop) empties paho's
store with `drop_out_messages()`, and our queue is the single source of truth: a message leaves it
only when its PUBACK arrives; on disconnect everything unacknowledged goes back to the front of
the queue in its original order and is re-sent, after `online`, once connected again. A message
acknowledged by the broker whose PUBACK was lost is sent again: QoS1 is at-least-once, and events
keep their `id` (the payload bytes are built once) so consumers can drop duplicates.

With an outbox (the default in the agent, facility_agent/outbox/) the in-memory queue becomes a
window onto the file: every message is written there first and handed to this queue only once
committed; a PUBACK deletes it from the file. While the broker is away the queue holds at most
the outbox window, the rest waits on disk and streams in, in order, once the broker is back, also
after a restart of the agent. `queue_limit` then does not apply (the outbox's bounds do).
Without an outbox (`outbox: {enabled: false}`), the queue is bounded by `queue_limit` as before.

Threading: paho's callbacks only hand over to the event loop (`call_soon_threadsafe`); the queue
and counters are touched on the event loop thread alone, so no lock is needed, and there is no
lock to deadlock against paho's own mutexes (paho calls `on_publish` holding its
`_out_message_mutex`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from facility_agent.config.site import MqttConfig
from facility_agent.core.model import DeviceState, Event
from facility_agent.core.sink import Sink
from facility_agent.outbox import Channel, Outbox, Row
from facility_agent.runtime.faults import Faults
from facility_agent.runtime.supervise import Supervisor
from facility_agent.sinks.comeback import port_open
from facility_agent.sinks.homeassistant import discovery_messages

log = logging.getLogger(__name__)
#: paho's own log: it reports every lost connection at ERROR, next to our own clearer warning,
#: so it is only shown when asked for (`--log-level debug` turns it on).
PAHO_LOG = logging.getLogger(f"{__name__}.paho")
if PAHO_LOG.level == logging.NOTSET:
    PAHO_LOG.setLevel(logging.CRITICAL)

#: Messages handed to paho and not yet acknowledged. paho measured 9.2k msg/s at 20 in flight on
#: this kind of machine (PEERS.md); a little more absorbs PUBACK latency on a busier broker.
MAX_IN_FLIGHT = 32

#: How long a clean stop waits for the broker to acknowledge `offline` at most.
OFFLINE_ACK_WAIT = 2.0

#: Longest wait between two connection attempts while the broker's port accepts nothing: the
#: bound on how late the sink notices a broker that is back.
DOWN_RETRY_MAX = 1.0


class MqttSinkError(Exception):
    """The MQTT settings cannot be used (a TLS file that cannot be read, ...)."""


@dataclass(slots=True)
class _Message:
    topic: str
    payload: bytes
    retain: bool
    #: `online`/`offline`: not counted in stats and never re-queued (a fresh one is sent).
    control: bool = False
    #: The outbox row this message came from (acknowledged there on PUBACK).
    seq: int | None = None


#: Outbox row kinds that are published retained.
_RETAINED_KINDS = frozenset({"state", "discovery"})


class MqttSink(Sink):
    """Publishes device states and events to one MQTT broker, surviving its outages."""

    name = "mqtt"

    def __init__(self, config: MqttConfig, site: str, outbox: Outbox | None = None) -> None:
        self.config = config
        self.outbox = outbox
        self._channel: Channel | None = None
        self._announced: set[str] = set()
        self.site = site
        self.prefix = f"{config.prefix}/{site}"
        self.status_topic = f"{self.prefix}/agent/status"
        self.client_id = config.client_id or f"facility-agent-{site}-{secrets.token_hex(4)}"
        self._where = f"{config.host}:{config.port}"
        self._queue: deque[_Message] = deque()
        self._in_flight: dict[int, _Message] = {}
        self._counts = {"sent": 0, "dropped": 0, "connects": 0, "disconnects": 0, "set_aside": 0}
        self.supervisor = Supervisor()
        self._connected = False
        self._stopping = False
        self._drop_warned = False
        self._outage_logged = False
        self._status_acked: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._client: mqtt.Client | None = None
        self._net_thread: threading.Thread | None = None
        self._watchdog: asyncio.Task[None] | None = None

    # -- the API the agent uses ------------------------------------------------------------

    def attach(self, supervisor: Supervisor, faults: Faults) -> None:
        self.supervisor = supervisor

    async def start(self) -> None:
        """Begin connecting in the background; returns at once even if the broker is down."""
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping = False
        if self.outbox is not None:
            self._channel = self.outbox.channel("mqtt", self._take_rows)
            await self.outbox.open()
            self._check_idle()  # what a previous run left counts as work to do
        self._start_client()
        self._watchdog = self.supervisor.spawn("mqtt-sink-watchdog", self._watch)

    def publish_state(self, state: DeviceState) -> None:
        """Queue the device's state (retained, QoS1); never blocks."""
        ha = self.config.homeassistant
        if ha.enabled:
            for topic, config in discovery_messages(
                state,
                site=self.site,
                mqtt_prefix=self.config.prefix,
                ha_prefix=ha.prefix,
                known=self._announced,
            ):
                self._submit(_Message(topic, config, retain=True), "discovery", None)
        payload = orjson.dumps(state.payload(self.site))
        topic = f"{self.prefix}/{state.device}/state"
        self._submit(_Message(topic, payload, retain=True), "state", state.ts.timestamp())

    def publish_event(self, event: Event) -> None:
        """Queue an event (not retained, QoS1); the payload, with its id, is built only once."""
        msg = _Message(f"{self.prefix}/events", orjson.dumps(event.payload()), retain=False)
        self._submit(msg, "event", event.ts.timestamp())

    def publish_retained(self, suffix: str, payload: bytes) -> None:
        """Queue a retained message on `P/{suffix}` (the agent's summary `P/agent/recent`; an
        empty payload clears a removed device's retained state)."""
        msg = _Message(f"{self.prefix}/{suffix}", payload, retain=True)
        self._submit(msg, "state", time.time())

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (until `timeout`), publish `offline` retained, disconnect.

        A clean DISCONNECT keeps the broker from firing the last will; the explicit `offline`
        takes its place.
        """
        client = self._client
        if client is None or self._stopping:
            return
        if self.outbox is not None:
            await self.outbox.flush(min(timeout, 2.0))
        deadline = time.monotonic() + timeout
        await self.wait_idle(timeout)
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._connected:
            assert self._loop is not None
            self._status_acked = self._loop.create_future()
            self._send(_Message(self.status_topic, b"offline", retain=True, control=True))
            wait = min(OFFLINE_ACK_WAIT, max(0.5, deadline - time.monotonic()))
            try:
                async with asyncio.timeout(wait):
                    await asyncio.shield(self._status_acked)
            except TimeoutError:
                log.warning(
                    "MQTT broker %s did not acknowledge 'offline' in %.1f s", self._where, wait
                )
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self._client = None
        self._connected = False
        # Whatever paho still held is ours again (counted below), not paho's to re-send.
        client.drop_out_messages()
        self._requeue()
        left = len(self._queue)
        if self._channel is not None and self.outbox is not None:
            # What the queue held is in the outbox file: the next start delivers it.
            left = self._channel.pending
            self._channel.release(len(self._queue))
            self._queue.clear()
            await self.outbox.close()
            self._channel = None
        if left:
            log.warning(
                "MQTT sink stopped with %d message(s) not acknowledged by %s%s",
                left,
                self._where,
                " (kept in the outbox)" if self.outbox is not None else "",
            )
        log.info("MQTT sink for %s stopped", self.prefix)

    @property
    def connected(self) -> bool:
        return self._connected

    def stats(self) -> dict[str, int]:
        in_flight = sum(1 for m in self._in_flight.values() if not m.control)
        queued = len(self._queue)
        if self._channel is not None:
            queued = max(0, self._channel.pending - in_flight)
        elif self.outbox is not None:
            queued = self.outbox._counts["mqtt"]
        return {"queued": queued, "in_flight": in_flight, **self._counts}

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued or in flight, False if `timeout` passes first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # -- the queue (event loop thread only) -------------------------------------------------

    def _submit(self, msg: _Message, kind: str, created: float | None) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._store, msg, kind, created)
        else:
            self._store(msg, kind, created)

    def _store(self, msg: _Message, kind: str, created: float | None) -> None:
        """Into the outbox when there is one (handed back by `_take_rows` once written)."""
        if self.outbox is None:
            self._enqueue(msg)
            return
        self._idle.clear()
        self.outbox.put("mqtt", kind, msg.topic, msg.payload, created)

    def _take_rows(self, rows: list[Row]) -> None:
        for row in rows:
            bad = unsendable(row)
            if bad is not None:
                # One bad row (an old format, a broken topic) must not block the queue behind it.
                assert self._channel is not None
                self._channel.set_aside(row, bad)
                self._counts["set_aside"] += 1
                log.warning("MQTT: outbox row %d set aside: %s", row.seq, bad)
                continue
            retain = row.kind in _RETAINED_KINDS
            self._queue.append(_Message(row.key, row.payload, retain, seq=row.seq))
        self._idle.clear()
        self._pump()

    def _enqueue(self, msg: _Message) -> None:
        self._queue.append(msg)
        self._idle.clear()
        self._trim()
        self._pump()

    def _trim(self) -> None:
        """Past `queue_limit`, drop the oldest; one warning per outage (memory-only mode)."""
        if self.outbox is not None:
            return
        excess = len(self._queue) - self.config.queue_limit
        if excess <= 0:
            return
        for _ in range(excess):
            self._queue.popleft()
        self._counts["dropped"] += excess
        if not self._drop_warned:
            self._drop_warned = True
            log.warning(
                "MQTT queue full (%d messages) while %s is unreachable: dropping the oldest",
                self.config.queue_limit,
                self._where,
            )

    def _pump(self) -> None:
        """Hand queued messages to paho, in order, while there is room in flight."""
        while (
            self._connected
            and not self._stopping
            and self._queue
            and len(self._in_flight) < MAX_IN_FLIGHT
        ):
            msg = self._queue.popleft()
            if not self._send(msg):
                self._queue.appendleft(msg)
                break
        self._check_idle()

    def _send(self, msg: _Message) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            info = client.publish(msg.topic, msg.payload, qos=1, retain=msg.retain)
        except Exception:
            log.exception("handing a message for %s to paho failed", msg.topic)
            return False
        # A publish racing with a lost connection (rc NO_CONN) stays in flight here: the
        # disconnect that follows puts it back in the queue, and on_connect removes paho's copy.
        self._in_flight[info.mid] = msg
        return True

    def _requeue(self) -> None:
        """Put everything unacknowledged back at the front of the queue, in original order."""
        pending = [m for m in self._in_flight.values() if not m.control]
        self._in_flight.clear()
        self._queue.extendleft(reversed(pending))
        self._trim()
        self._check_idle()

    def _check_idle(self) -> None:
        stored = self._channel.pending if self._channel is not None else 0
        if stored or self._queue or any(not m.control for m in self._in_flight.values()):
            self._idle.clear()
        else:
            self._idle.set()

    # -- paho's events, replayed on the event loop ------------------------------------------

    def _connected_now(self, client: Any) -> None:
        if client is not self._client or self._stopping:
            return
        self._requeue()  # in case a disconnect was never reported
        self._connected = True
        self._counts["connects"] += 1
        self._drop_warned = False
        self._outage_logged = False
        log.info(
            "connected to MQTT broker %s as %s (%d message(s) queued)",
            self._where,
            self.client_id,
            len(self._queue),
        )
        self._send(_Message(self.status_topic, b"online", retain=True, control=True))
        self._pump()

    def _disconnected_now(self, client: Any, reason: str) -> None:
        if client is not self._client:
            return
        was_connected = self._connected
        self._connected = False
        self._requeue()
        if self._stopping:
            return
        if was_connected:
            self._counts["disconnects"] += 1
            log.warning(
                "lost the MQTT broker %s (%s); reconnecting, %d message(s) kept",
                self._where,
                reason,
                len(self._queue),
            )
        elif not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "MQTT broker %s closed the connection before accepting it (%s); retrying",
                self._where,
                reason,
            )

    def _acked(self, client: Any, mid: int, failure: str | None) -> None:
        if client is not self._client:
            return
        msg = self._in_flight.pop(mid, None)
        if msg is None:
            return
        if msg.seq is not None and self._channel is not None:
            # Refused messages too: the broker said no (an ACL), sending it again cannot help.
            self._channel.ack(msg.seq)
        if msg.control:
            if msg.payload == b"offline" and self._status_acked and not self._status_acked.done():
                self._status_acked.set_result(None)
        elif failure:
            self._counts["dropped"] += 1
            log.warning(
                "MQTT broker %s refused a message on %s: %s", self._where, msg.topic, failure
            )
        else:
            self._counts["sent"] += 1
        self._pump()

    # -- paho's thread -----------------------------------------------------------------------

    def _start_client(self) -> None:
        client = self._make_client()
        self._client = client
        client.connect_async(self.config.host, self.config.port, keepalive=self._keepalive())
        client.loop_start()
        # paho keeps no public handle on its network thread; the watchdog needs one.
        thread = getattr(client, "_thread", None)
        self._net_thread = thread if isinstance(thread, threading.Thread) else None

    def _keepalive(self) -> int:
        return max(1, round(self.config.keepalive))

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        # A bug in a callback must not kill paho's network thread: paho logs it instead.
        client.suppress_exceptions = True
        client.enable_logger(PAHO_LOG)
        # 0 = no limit in paho; our own window (MAX_IN_FLIGHT) decides what is in flight.
        client.max_inflight_messages_set(0)
        # Typed as int, but paho only multiplies and compares the delays: sub-second ones work.
        client.reconnect_delay_set(cfg.reconnect_min, cfg.reconnect_max)  # type: ignore[arg-type]
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        if cfg.username is not None:
            password = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            tls = cfg.tls
            try:
                client.tls_set(
                    ca_certs=str(tls.ca_file) if tls.ca_file else None,
                    certfile=str(tls.cert_file) if tls.cert_file else None,
                    keyfile=str(tls.key_file) if tls.key_file else None,
                    cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise MqttSinkError(f"mqtt.tls: cannot load the TLS files: {exc}") from None
            if tls.insecure:
                client.tls_insecure_set(True)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn` on the event loop; a closed loop (agent gone) is not paho's problem."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # Nagle delays small publishes behind the broker's delayed ACK; PEERS.md measured p99
        # latency falling from up to 9 ms to about 1 ms with TCP_NODELAY.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        try:
            if reason_code.is_failure:
                self._log_refused(reason_code)
                return
            # See the module docstring: our queue re-sends, paho must not.
            client.drop_out_messages()
            self._call(self._connected_now, client)
        except Exception:
            log.exception("MQTT on_connect failed")

    def _log_refused(self, reason_code: ReasonCode) -> None:
        hint = ""
        text = str(reason_code)
        if "authori" in text.lower() or "password" in text.lower():
            hint = " (check mqtt.username and mqtt.password)"
        level = logging.DEBUG if self._outage_logged else logging.ERROR
        self._outage_logged = True
        log.log(level, "MQTT broker %s refused the connection: %s%s", self._where, text, hint)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        level = logging.DEBUG if self._outage_logged else logging.WARNING
        self._outage_logged = True
        log.log(level, "cannot reach MQTT broker %s; retrying", self._where)
        # On paho's thread, which would only sleep now: a blocking probe costs nothing here.
        if not port_open(self.config.host, self.config.port, DOWN_RETRY_MAX):
            # Down, not refusing us: no doubling, try again soon (see the module docstring).
            fast = min(self.config.reconnect_min, DOWN_RETRY_MAX)
            client.reconnect_delay_set(fast, self.config.reconnect_max)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Any
    ) -> None:
        try:
            self._call(self._disconnected_now, client, str(reason_code))
        except Exception:
            log.exception("MQTT on_disconnect failed")

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any
    ) -> None:
        try:
            failure = str(reason_code) if reason_code.is_failure else None
            self._call(self._acked, client, mid, failure)
        except Exception:
            log.exception("MQTT on_publish failed")

    async def _watch(self) -> None:
        """Restart paho's network thread should something odd from the broker ever kill it."""
        while not self._stopping:
            await asyncio.sleep(1.0)
            thread = self._net_thread
            if self._stopping or thread is None or thread.is_alive():
                continue
            log.error("the MQTT network thread for %s died; starting a new client", self._where)
            old = self._client
            self._disconnected_now(old, "network thread died")
            try:
                if old is not None:
                    old.drop_out_messages()
                self._start_client()
            except Exception:
                log.exception("restarting the MQTT client failed")


def unsendable(row: Row) -> str | None:
    """Why paho would refuse this stored row for ever (it raises ValueError), or None."""
    topic = row.key
    if not isinstance(topic, str) or not topic:
        return "no topic"
    if "+" in topic or "#" in topic:
        return f"wildcard in topic {topic[:100]!r}"
    if len(topic.encode("utf-8", "surrogatepass")) > 65535:
        return "topic longer than 65535 bytes"
    if not isinstance(row.payload, bytes | bytearray | str):
        return f"payload is {type(row.payload).__name__}, not bytes"
    return None
