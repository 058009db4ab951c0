"""Chat alerts: the alerting rules on a fake clock, then real delivery to aiosmtpd and to a real
Synapse, with `!ack` from the room stopping the repeats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from facility_agent.model import Event, Severity
from facility_agent.outbox import Outbox
from facility_agent.output_config import NotifyRoute
from facility_agent.sinks.notify import NotifySink
from facility_agent.sinks.notify.alerting import AlertRoute, short_id
from tests.fixtures.outputs import Mailbox, Synapse, mail_text

SITE = "lab1"
T0 = 1_800_000_000.0


def ev(
    device: str,
    kind: str,
    severity: Severity = Severity.CRITICAL,
    msg: str | None = None,
    at: float = T0,
) -> Event:
    return Event(
        SITE,
        device,
        kind,
        severity,
        msg or f"{device} {kind}",
        ts=datetime.fromtimestamp(at, UTC),
    )


def route(**kw: Any) -> NotifyRoute:
    base: dict[str, Any] = {
        "url": "json://127.0.0.1:9/",
        "group_wait": 5,
        "group_interval": 60,
        "repeat_interval": 3600,
    }
    return NotifyRoute.model_validate({**base, **kw})


# -- the rules, on a fake clock --------------------------------------------------------------


def test_group_wait_folds_a_burst_into_one_message() -> None:
    r = AlertRoute(route(), "r", SITE)
    for i in range(30):
        r.offer(ev(f"srv-{i:02d}", "device.comm_lost", Severity.WARNING), T0)
    assert r.due(T0 + 1) == []
    (msg,) = r.due(T0 + 5)
    assert msg.title == "[lab1] 30 alert(s), 0 critical"
    assert len(msg.body.splitlines()) <= 12 and "more line(s)" in msg.body
    assert r.due(T0 + 6) == []


def test_duplicates_send_nothing_and_resolution_follows_group_interval() -> None:
    r = AlertRoute(route(), "r", SITE)
    first = ev("ups-a", "power.on_battery")
    r.offer(first, T0)
    (msg,) = r.due(T0 + 5)
    assert "!ack " + short_id(first.id) in msg.body and msg.severity is Severity.CRITICAL
    r.offer(ev("ups-a", "power.on_battery"), T0 + 10)  # the same alert again: a duplicate
    assert r.due(T0 + 20) == [] and r.counts["duplicates"] == 1
    # power.on_line is info (below min_severity) but resolves what this route sent.
    back = ev("ups-a", "power.on_line", Severity.INFO, "ups-a is back on line", at=T0 + 30)
    r.offer(back, T0 + 30)
    assert r.due(T0 + 40) == []  # group_interval (60 s) since the last message
    (res,) = r.due(T0 + 65)
    assert res.kind == "resolved" and "✅ ups-a is back on line" in res.body
    assert "after 30 s" in res.body


def test_filters_by_severity_and_type() -> None:
    r = AlertRoute(route(min_severity="critical", exclude_events=["power.low_*"]), "r", SITE)
    r.offer(ev("ups-a", "device.comm_lost", Severity.WARNING), T0)
    r.offer(ev("ups-a", "power.low_battery"), T0)
    assert r.due(T0 + 10) == [] and r.counts["filtered"] == 2
    only = AlertRoute(route(events=["shutdown.*"]), "r", SITE)
    only.offer(ev("ups-a", "power.on_battery"), T0)
    only.offer(ev("site", "shutdown.started"), T0)
    (msg,) = only.due(T0 + 5)
    assert "shutdown.started" in msg.title


def test_repeats_until_acknowledged_and_silences() -> None:
    r = AlertRoute(route(repeat_interval=600), "r", SITE)
    a = ev("ups-a", "power.on_battery")
    r.offer(a, T0)
    r.due(T0 + 5)
    (rep,) = r.due(T0 + 606)
    assert rep.kind == "repeat" and rep.title.startswith("Repeat:")
    assert r.ack(short_id(a.id).upper(), "@alice:localhost") is not None
    assert r.due(T0 + 2000) == []
    r.silence("ups-b", T0 + 100)
    r.offer(ev("ups-b", "power.on_battery"), T0 + 10)
    assert r.due(T0 + 20) == []  # silenced: noted, not sent
    assert r.ack("nope", "@alice:localhost") is None


def test_downstream_alerts_fold_into_the_ups_alert() -> None:
    feeds = {"ups-a": ["pdu-a"], "pdu-a": ["srv-01", "srv-02"], "ups-b": ["pdu-b"]}
    r = AlertRoute(route(), "r", SITE, feeds)
    # Servers noticed first, the UPS a moment later: all inside group_wait.
    r.offer(ev("srv-01", "psu.lost", Severity.WARNING), T0)
    r.offer(ev("srv-02", "psu.lost", Severity.WARNING), T0 + 0.5)
    r.offer(ev("ups-a", "power.on_battery", msg="ups-a is on battery"), T0 + 1)
    r.offer(ev("pdu-b", "power.off", Severity.WARNING), T0 + 1)  # not fed by ups-a
    (msg,) = r.due(T0 + 6)
    assert "ups-a is on battery" in msg.body
    assert "2 downstream alert(s) folded in: srv-01, srv-02" in msg.body
    assert "srv-01 psu.lost" not in msg.body
    assert "pdu-b power.off" in msg.body
    assert r.counts["folded"] == 2
    # The UPS comes back while a PSU stays lost: that one now stands alone.
    r.offer(ev("ups-a", "power.on_line", Severity.INFO, "ups-a is back on line"), T0 + 100)
    r.offer(ev("srv-02", "psu.ok", Severity.INFO), T0 + 100)
    (after,) = r.due(T0 + 200)
    assert "✅ ups-a is back on line" in after.body
    assert "srv-01 psu.lost" in after.body


# -- real delivery ---------------------------------------------------------------------------


@pytest.fixture
async def make_notify(tmp_path: Path) -> AsyncIterator[Callable[..., NotifySink]]:
    sinks: list[NotifySink] = []

    def make(*routes: NotifyRoute, feeds: dict[str, list[str]] | None = None) -> NotifySink:
        box = Outbox(tmp_path / f"outbox-{len(sinks)}.sqlite")
        sink = NotifySink(routes, SITE, box, feeds=feeds)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.stop(timeout=1)


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not true after {timeout} s")
        await asyncio.sleep(0.05)


def mail_route(port: int, **kw: Any) -> NotifyRoute:
    url = f"mailto://127.0.0.1:{port}?from=agent@example.com&to=ops@example.com"
    return route(url=url, name="mail", group_wait=0.2, group_interval=0.5, **kw)


async def test_email_alert_arrives_reads_well_and_never_blocks(
    smtp_server: Mailbox, make_notify: Callable[..., NotifySink]
) -> None:
    sink = make_notify(mail_route(smtp_server.port))
    await sink.start()
    began = time.monotonic()
    for i in range(200):  # a flood: grouped, and publish_event never waits on delivery
        sink.publish_event(ev(f"srv-{i:03d}", "device.comm_lost", Severity.WARNING))
    sink.publish_event(ev("ups-a", "power.on_battery", msg="ups-a is on battery (charge 98%)"))
    assert time.monotonic() - began < 1.0
    await until(lambda: len(smtp_server.snapshot()) >= 1, 20, "the alert mail")
    await asyncio.sleep(1.0)
    mails = smtp_server.snapshot()
    assert len(mails) == 1, [m["Subject"] for m in mails]  # 201 events, one message
    text = mail_text(mails[0])
    assert "201 alert(s), 1 critical" in text
    assert "more line(s)" in text
    assert "delayed" not in text


async def test_mail_server_down_then_up_delivers_marked_delayed(
    smtp_server: Mailbox, make_notify: Callable[..., NotifySink], caplog: pytest.LogCaptureFixture
) -> None:
    port = smtp_server.port
    smtp_server.stop()  # the service refuses: retried with backoff, nothing lost
    sink = make_notify(mail_route(port, delayed_after=1, retry_min=0.2, retry_max=0.5))
    await sink.start()
    sink.publish_event(ev("ups-a", "power.on_battery", msg="ups-a is on battery"))
    await until(lambda: sink.stats()["failed"] >= 2, 20, "failed attempts")
    assert any("retrying with backoff" in r.getMessage() for r in caplog.records)
    assert not any("ops@example.com" in r.getMessage() for r in caplog.records)
    await asyncio.sleep(1.0)
    smtp_server.start()
    await until(lambda: len(smtp_server.snapshot()) >= 1, 20, "the late mail")
    text = mail_text(smtp_server.snapshot()[0])
    assert "⏳ delayed" in text and "ups-a is on battery" in text
    assert sink.stats()["delayed"] == 1


async def test_alert_survives_a_restart_in_the_outbox(
    smtp_server: Mailbox, make_notify: Callable[..., NotifySink], tmp_path: Path
) -> None:
    port = smtp_server.port
    smtp_server.stop()
    first = make_notify(mail_route(port, retry_min=0.2, retry_max=0.5))
    await first.start()
    first.publish_event(ev("ups-a", "power.on_battery", msg="ups-a is on battery"))
    await until(lambda: first.stats()["failed"] >= 1, 20, "a failed attempt")
    await first.stop(timeout=0.5)
    smtp_server.start()
    second = NotifySink([mail_route(port)], SITE, Outbox(tmp_path / "outbox-0.sqlite"))
    await second.start()
    try:
        await until(lambda: len(smtp_server.snapshot()) >= 1, 20, "the mail after restart")
        assert "ups-a is on battery" in mail_text(smtp_server.snapshot()[0])
    finally:
        await second.stop(timeout=1)


async def test_matrix_alert_read_back_and_ack_stops_repeats(
    synapse: Synapse, make_notify: Callable[..., NotifySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    from apprise.plugins.matrix import NotifyMatrix

    monkeypatch.setattr(NotifyMatrix, "request_rate_per_sec", 0)
    bot = synapse.register("bot", "botpw")
    alice = synapse.register("alice", "alicepw")
    bob = synapse.register("bob", "bobpw")
    room = synapse.create_room(alice, "alerts", [bot.user_id, bob.user_id])
    synapse.call("POST", f"/_matrix/client/v3/join/{room}", bob.token, json={})
    url = f"matrix://bot:botpw@127.0.0.1:{synapse.port}/#alerts"
    cfg = route(
        url=url,
        name="matrix",
        group_wait=0.2,
        group_interval=0.5,
        repeat_interval=1.5,
        allow_commands=[alice.user_id],
    )
    sink = make_notify(cfg)
    await sink.start()
    listener = sink._listeners[0]
    await asyncio.wait_for(listener.ready.wait(), 20)

    alert = ev("ups-a", "power.on_battery", msg="ups-a is on battery (charge 98%)", at=time.time())
    sink.publish_event(alert)

    def from_bot() -> list[str]:
        return [m["body"] for m in synapse.messages(alice, room) if m["sender"] == bot.user_id]

    await until(lambda: any("ups-a is on battery" in b for b in from_bot()), 20, "the alert")
    await until(lambda: any(b.startswith("# Repeat:") for b in from_bot()), 20, "a repeat")
    sid = short_id(alert.id)
    synapse.say(bob, room, f"!ack {sid}")  # not allowed: ignored
    await asyncio.sleep(1.0)
    assert not any("acknowledged" in b for b in from_bot())
    synapse.say(alice, room, f"!ack {sid}")
    await until(lambda: any("acknowledged by @alice" in b for b in from_bot()), 20, "the ack")
    await asyncio.sleep(0.5)
    settled = len(from_bot())
    await asyncio.sleep(3.5)  # more than two repeat intervals
    assert len(from_bot()) == settled, from_bot()[settled:]
    synapse.say(alice, room, "!status")
    await until(lambda: any("1 firing" in b for b in from_bot()), 20, "the status reply")
    sink.publish_event(ev("ups-a", "power.on_line", Severity.INFO, "ups-a is back on line"))
    await until(lambda: any("✅ ups-a is back on line" in b for b in from_bot()), 20, "resolved")


async def test_back_as_soon_as_the_mail_server_is(
    smtp_server: Mailbox, make_notify: Callable[..., NotifySink]
) -> None:
    """With the default backoff (2 s doubled up to 300 s), an alert raised while the mail
    server was down goes out within seconds of its return, not at the next doubled retry."""
    port = smtp_server.port
    smtp_server.stop()
    sink = make_notify(mail_route(port, retry_min=2, retry_max=300))
    await sink.start()
    sink.publish_event(ev("ups-a", "power.on_battery", msg="ups-a is on battery"))
    await asyncio.sleep(20.0)  # retries about 2, 4 and 8 s apart; the next one 16 s later
    assert sink.stats()["failed"] >= 3
    smtp_server.start()
    back = time.monotonic()
    await until(lambda: len(smtp_server.snapshot()) >= 1, 40, "the late mail")
    took = time.monotonic() - back
    print(f"mail server down 20 s: alert delivered {took:.2f} s after its return")
    assert took <= 3.0
    assert "ups-a is on battery" in mail_text(smtp_server.snapshot()[0])
