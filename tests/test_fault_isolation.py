"""Fault isolation in the event path (issue 12, section 2): a sink that raises never keeps the
others, the hooks or the policy engine from an event; every long-lived task is supervised and a
dead one shows in /healthz and `facility-agent status`; bad outbox rows are set aside; an
exception inside recovery ends in `recovery.failed`; /metrics scrapes read loop snapshots.

Real mosquitto, real HTTP scrapes of the Prometheus sink, real aiosmtpd and real hook processes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from facility_agent.cli.status import fetch, judge
from facility_agent.core.model import DeviceState, Event, Severity
from facility_agent.core.sink import Sink
from facility_agent.outbox import Outbox
from facility_agent.policy import engine as engine_module
from facility_agent.policy.journal import Journal
from facility_agent.runtime.agent import Agent
from facility_agent.runtime.poller import DevicePoller
from facility_agent.runtime.service import run_service
from facility_agent.runtime.supervise import Supervisor
from facility_agent.sinks.assemble import build_outputs
from facility_agent.sinks.mqtt import MqttSink
from facility_agent.sinks.notify import NotifySink
from facility_agent.sinks.prometheus import PrometheusSink
from tests.fixtures.mosquitto import Broker, Collector
from tests.fixtures.outputs import Mailbox, mail_text
from tests.fixtures.procs import free_port, require_binary
from tests.fixtures.waiting import until
from tests.test_notify import mail_route
from tests.test_policy_engine import (
    Recorder,
    _world,  # noqa: F401  (the autouse fixture: WORLD and its driver)
    hook_log,
    hook_script,
    make_site,
    outage,
    power_back,
)
from tests.test_snmp_traps_and_tools import _listener


class InertSink(Sink):
    """An output that does nothing: the test sinks below override what they watch."""

    name = "inert"

    async def start(self) -> None:
        pass

    def publish_state(self, state: DeviceState) -> None:
        pass

    def publish_event(self, event: Event) -> None:
        pass

    async def stop(self, timeout: float = 5.0) -> None:
        pass


class BrokenSink(InertSink):
    """Raises on every state and event, the way a buggy output would."""

    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def publish_state(self, state: DeviceState) -> None:
        self.calls += 1
        raise RuntimeError("broken sink: state")

    def publish_event(self, event: Event) -> None:
        self.calls += 1
        raise RuntimeError("broken sink: event")


def with_outputs(tmp_path: Path, broker: Broker, **overrides: Any) -> Any:
    return make_site(
        tmp_path,
        mqtt={"host": broker.host, "port": broker.port, "heartbeat": 5},
        prometheus={"listen": "127.0.0.1:0"},
        **overrides,
    )


def prometheus_of(agent: Agent) -> PrometheusSink:
    return next(s for s in agent.sinks if isinstance(s, PrometheusSink))


def scrape(sink: PrometheusSink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{sink.port}/metrics", timeout=5).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# -- sink isolation ---------------------------------------------------------------------------


async def test_raising_sink_never_keeps_mqtt_hooks_or_policy_from_an_event(
    tmp_path: Path,
    mosquitto_broker: Broker,
    mqtt_subscribe: Callable[..., Collector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    shutdown = make_site(tmp_path).shutdown.model_dump()
    shutdown["triggers"]["generator_not_running"] = None
    hooks = [{"events": ["shutdown.started"], "run": hook_script(tmp_path, "h"), "timeout": 5}]
    config = with_outputs(tmp_path, mosquitto_broker, shutdown=shutdown, hooks=hooks)
    broken = BrokenSink()
    # Built the way the agent builds its outputs, with the broken one first in line.
    agent = Agent(config, sinks=[broken, *build_outputs(config)])
    rec = Recorder(agent)
    sub = mqtt_subscribe(mosquitto_broker, "facility/lab1/events")
    caplog.set_level(logging.ERROR, logger="facility_agent.runtime.faults")
    await agent.start()
    try:
        await asyncio.sleep(0.3)
        outage("OB LB")
        await rec.wait("shutdown.started", 5)
        await asyncio.to_thread(
            sub.wait_for, lambda got: any(b'"shutdown.started"' in m.payload for m in got), 10
        )
        await until(lambda: bool(hook_log(tmp_path, "h")), 10, "the shutdown.started hook")
        assert hook_log(tmp_path, "h")[0]["type"] == "shutdown.started"
        await rec.wait("shutdown.completed", 15)
        metrics = await asyncio.to_thread(scrape, prometheus_of(agent))
        key = "facility_agent_output_publish_errors_total"
        events = metrics[(key, (("kind", "publish_event:RuntimeError"), ("output", "broken")))]
        states = metrics[(key, (("kind", "publish_state:RuntimeError"), ("output", "broken")))]
        assert events >= 3 and states >= 2  # on battery, low battery, shutdown.started ...
        assert events + states == broken.calls
        # Logged once per sink and kind of failure, not once per event.
        lines = [r for r in caplog.records if "broken failed in" in r.getMessage()]
        assert len(lines) == 2, [r.getMessage() for r in lines]
        assert all(r.exc_info is not None for r in lines)
    finally:
        await agent.stop()


# -- supervised tasks ---------------------------------------------------------------------------


async def test_dead_poller_is_restarted_and_healthz_and_status_say_so_meanwhile(
    tmp_path: Path,
    mosquitto_broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    died: list[str] = []
    real_sleep = DevicePoller._sleep

    async def dying_sleep(self: DevicePoller, delay: float) -> None:
        if self.device == "ups-b" and self.polls >= 3 and not died:
            died.append(self.device)
            raise RuntimeError("poller bug")
        await real_sleep(self, delay)

    monkeypatch.setattr(DevicePoller, "_sleep", dying_sleep)
    config = with_outputs(tmp_path, mosquitto_broker)
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({"site": "lab1"}))
    agent = Agent(config)
    agent.supervisor.backoff_min = 4.0  # long enough to look at it while it is down
    stop = asyncio.Event()
    service = asyncio.create_task(run_service(agent, site_file, stop))
    try:
        await until(lambda: bool(died), 10, "the poller's death")
        prom = prometheus_of(agent)
        health = await asyncio.to_thread(
            requests.get, f"http://127.0.0.1:{prom.port}/healthz", timeout=5
        )
        assert health.status_code == 200  # alive: the agent restarts the task itself
        body = health.json()
        assert body["status"] == "degraded"
        assert [t["name"] for t in body["tasks_down"]] == ["poll:ups-b"]
        assert "RuntimeError: poller bug" in body["tasks_down"][0]["last_error"]
        metrics = await asyncio.to_thread(scrape, prom)
        assert metrics[("facility_agent_task_down", (("site", "lab1"), ("task", "poll:ups-b")))]
        assert any("task poll:ups-b died" in r.getMessage() and r.exc_info for r in caplog.records)
        # `facility-agent status` reads the retained summary.
        data = await asyncio.to_thread(
            fetch, mosquitto_broker.host, mosquitto_broker.port, "facility/lab1"
        )
        texts = [text for _, text in judge(data).problems]
        assert any("agent task poll:ups-b is down (RuntimeError: poller bug)" in t for t in texts)
        # Back after the back-off: polled again, healthy again, the restart counted.
        polls = agent.pollers["ups-b"].polls
        await until(lambda: agent.pollers["ups-b"].polls > polls, 15, "polls after the restart")
        health = await asyncio.to_thread(
            requests.get, f"http://127.0.0.1:{prom.port}/healthz", timeout=5
        )
        assert health.status_code == 200, health.text
        assert health.json()["task_restarts"] == {"poll:ups-b": 1}
        await asyncio.sleep(1.0)  # the summary follows within SUMMARY_MIN
        data = await asyncio.to_thread(
            fetch, mosquitto_broker.host, mosquitto_broker.port, "facility/lab1"
        )
        assert not any("is down" in text for _, text in judge(data).problems)
    finally:
        stop.set()
        await service


async def test_supervisor_backs_off_and_a_task_that_returns_is_done() -> None:
    sup = Supervisor(backoff_min=0.05, backoff_max=0.2)
    starts: list[float] = []

    async def always_dies() -> None:
        starts.append(time.monotonic())
        raise ValueError("boom")

    async def finishes() -> None:
        pass

    task = sup.spawn("dies", always_dies)
    done = sup.spawn("done", finishes)
    await asyncio.sleep(1.2)
    task.cancel()
    await asyncio.gather(task, done, return_exceptions=True)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert 3 <= len(starts) <= 9, starts  # 0.05, 0.1, 0.2, 0.2 ...: backed off, not spinning
    for i, gap in enumerate(gaps):
        assert gap >= min(0.05 * 2**i, 0.2) * 0.9, gaps
    assert sup.tasks["dies"].restarts == len(starts) - 1
    assert sup.tasks["done"].restarts == 0 and not sup.down()  # cancelled: not "down"


# -- bad outbox rows ----------------------------------------------------------------------------


def plant_rows(path: Path, rows: list[tuple[str, str, str, Any]]) -> None:
    """Rows as an older (or broken) version might have left them in the outbox file."""
    box = sqlite3.connect(path)
    box.executescript(
        "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "sink TEXT NOT NULL, kind TEXT NOT NULL, created REAL NOT NULL, key TEXT NOT NULL, "
        "payload BLOB NOT NULL)"
    )
    for sink, kind, key, payload in rows:
        box.execute(
            "INSERT INTO outbox (sink, kind, created, key, payload) VALUES (?, ?, ?, ?, ?)",
            (sink, kind, time.time(), key, payload),
        )
    box.commit()
    box.close()


async def test_bad_mqtt_rows_are_set_aside_and_the_rest_delivered(
    tmp_path: Path, mosquitto_broker: Broker, mqtt_subscribe: Callable[..., Collector]
) -> None:
    from facility_agent.config.site import MqttConfig

    path = tmp_path / "outbox.sqlite"
    plant_rows(
        path,
        [
            ("mqtt", "event", "facility/lab1/#", b"{}"),  # a topic paho refuses for ever
            ("mqtt", "event", "", b"{}"),
            ("mqtt", "event", "facility/lab1/events", b'{"type": "after.the.bad.ones"}'),
        ],
    )
    sub = mqtt_subscribe(mosquitto_broker, "facility/lab1/events")
    box = Outbox(path)
    sink = MqttSink(MqttConfig(host=mosquitto_broker.host, port=mosquitto_broker.port), "lab1", box)
    await sink.start()
    try:
        await asyncio.to_thread(
            sub.wait_for, lambda got: any(b"after.the.bad.ones" in m.payload for m in got), 10
        )
        assert sink.stats()["set_aside"] == 2
        await box.flush()
        aside = box.set_aside_rows("mqtt")
        assert sorted(r.key for r, _ in aside) == ["", "facility/lab1/#"]
        assert box.dropped[("mqtt", "set_aside")] == 2
        sink.publish_event(Event("lab1", "ups-a", "still.flowing", Severity.INFO, "after"))
        await asyncio.to_thread(
            sub.wait_for, lambda got: any(b"still.flowing" in m.payload for m in got), 10
        )
    finally:
        await sink.stop(timeout=2)


async def test_undecodable_and_old_format_alert_rows_never_kill_the_route(
    tmp_path: Path, smtp_server: Mailbox
) -> None:
    path = tmp_path / "outbox.sqlite"
    good = {"title": "[lab1] planted", "body": "a good one", "severity": "critical", "kind": "x"}
    plant_rows(
        path,
        [
            ("notify:mail", "alert", "firing", b"\xff\xfe not json"),
            ("notify:mail", "alert", "firing", orjson.dumps({"text": "format of old"})),
            ("notify:mail", "alert", "firing", orjson.dumps(good)),
        ],
    )
    box = Outbox(path)
    sink = NotifySink([mail_route(smtp_server.port)], "lab1", box)
    await sink.start()
    try:
        await until(lambda: len(smtp_server.snapshot()) >= 1, 20, "the good mail")
        assert "a good one" in mail_text(smtp_server.snapshot()[0])
        assert sink.stats()["set_aside"] == 2
        await box.flush()
        reasons = [reason for _, reason in box.set_aside_rows("notify:mail")]
        assert len(reasons) == 2 and all(r.startswith("undecodable:") for r in reasons)
        assert not sink.supervisor.down() and sink.supervisor.tasks["notify:mail"].restarts == 0
    finally:
        await sink.stop(timeout=1)


# -- recovery ------------------------------------------------------------------------------------


async def test_exception_inside_recovery_ends_in_recovery_failed_and_closes_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_step(step: Any, ctx: Any) -> tuple[bool, str]:
        raise KeyError("a bug in a recovery step")

    monkeypatch.setattr(engine_module, "execute_step", broken_step)
    shutdown = make_site(tmp_path).shutdown.model_dump()
    shutdown["triggers"]["generator_not_running"] = None
    agent = Agent(make_site(tmp_path, shutdown=shutdown), sinks=[])
    rec = Recorder(agent)
    await agent.start()
    try:
        await asyncio.sleep(0.3)
        outage("OB LB")
        await rec.wait("shutdown.completed", 15)
        power_back()
        failed = await rec.wait("recovery.failed", 15)
        assert "KeyError" in failed.message and failed.severity == Severity.CRITICAL
        assert agent.policy is not None and agent.policy.recovery_task is None
    finally:
        await agent.stop()
    journal = Journal(tmp_path / "state" / "journal.sqlite")
    try:
        last = journal.last_run("recovery")
        assert last is not None and last.state == "failed"
        assert journal.unfinished("recovery") is None
    finally:
        journal.close()


# -- /metrics from a thread ----------------------------------------------------------------------


class CountingSink(InertSink):
    """Counts the events it saw; /metrics shows it as facility_agent_output_seen."""

    name = "counting"

    def __init__(self) -> None:
        self.seen = 0

    def publish_event(self, event: Event) -> None:
        self.seen += 1

    def stats(self) -> dict[str, int]:
        return {"seen": self.seen}


async def test_scrapes_at_50_per_second_during_an_event_flood_are_consistent(
    tmp_path: Path,
) -> None:
    config = make_site(tmp_path, prometheus={"listen": "127.0.0.1:0"})
    counting = CountingSink()
    sinks = [counting, *build_outputs(config)]
    agent = Agent(config, sinks=sinks)
    prom = prometheus_of(agent)
    prom.sinks.append(counting)
    await agent.start()
    scrapes: list[tuple[float, float]] = []
    last = [""]
    errors: list[str] = []
    done = threading.Event()

    def scraper() -> None:
        session = requests.Session()
        while not done.is_set():
            began = time.monotonic()
            try:
                resp = session.get(f"http://127.0.0.1:{prom.port}/metrics", timeout=5)
                if resp.status_code != 200:
                    errors.append(f"HTTP {resp.status_code}")
                # Read the two series by line (the full parser would hold the GIL longer
                # than the scrape itself); the last scrape is parsed in full below.
                events = seen = 0.0
                for line in resp.text.splitlines():
                    if line.startswith("facility_agent_events_total{"):
                        events += float(line.rsplit(" ", 1)[1])
                    elif line.startswith('facility_agent_output_seen{output="counting"}'):
                        seen = float(line.rsplit(" ", 1)[1])
                scrapes.append((events, seen))
                last[0] = resp.text
            except Exception as exc:
                errors.append(repr(exc))
            time.sleep(max(0.0, 0.02 - (time.monotonic() - began)))

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        began = time.monotonic()
        n = 0
        while time.monotonic() - began < 4.0:
            # Batches longer than the GIL's switch interval (5 ms): a scrape reading live
            # state would see one counter before a batch and the other after it.
            for _ in range(1000):
                # New types as it goes: the counters grow while the HTTP thread renders them.
                agent.emit(Event("lab1", "ups-a", f"flood.t{n % 400}", Severity.INFO, "flood"))
                n += 1
            await asyncio.sleep(0.03)
    finally:
        done.set()
        await asyncio.to_thread(thread.join)
        await agent.stop()
    assert not errors, errors[:5]
    print(f"{len(scrapes)} scrapes, {n} events in 4 s")
    assert len(scrapes) >= 30, len(scrapes)  # ~50/s for 4 s, less on a loaded machine
    assert all(events == seen for events, seen in scrapes), [(e, s) for e, s in scrapes if e != s][
        :5
    ]
    assert [e for e, _ in scrapes] == sorted(e for e, _ in scrapes)  # counters only grow
    assert scrapes[-1][0] > scrapes[0][0] and n > 1000
    families = {f.name: f for f in text_string_to_metric_families(last[0])}
    assert sum(s.value for s in families["facility_agent_events"].samples) == scrapes[-1][0]


# -- trap listener -----------------------------------------------------------------------------


async def test_trap_listener_listens_again_when_its_socket_is_closed(tmp_path: Path) -> None:
    snmptrap = require_binary("snmptrap")
    events: list[Event] = []
    port = free_port(socket.SOCK_DGRAM)
    listener = _listener(events, [], port)
    await listener.start()

    async def send() -> None:
        proc = await asyncio.create_subprocess_exec(
            snmptrap, "-v2c", "-c", "public", f"127.0.0.1:{port}", "",
            ".1.3.6.1.2.1.33.2.0.1",
        )  # fmt: skip
        assert await proc.wait() == 0

    try:
        await send()
        await until(lambda: len(events) == 1, 10, "the first trap")
        assert listener._sock is not None
        listener._sock.close()  # the socket dies under pysnmp
        deadline = time.monotonic() + 10
        while len(events) < 2 and time.monotonic() < deadline:
            await send()
            await asyncio.sleep(0.5)
        assert len(events) >= 2, "no trap received after the socket was closed"
        assert listener.port == port
    finally:
        await listener.stop()
