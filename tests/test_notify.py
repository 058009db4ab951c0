"""Chat alerts: the alerting rules on a fake clock, then real delivery to aiosmtpd and to a real
Synapse, with `!ack` from the room stopping the repeats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from facility_agent.config.outputs import NotifyRoute
from facility_agent.core.model import Event, Severity
from facility_agent.outbox import Outbox
from facility_agent.sinks.notify import NotifySink
from facility_agent.sinks.notify.alerting import AlertRoute, short_id
from facility_agent.sinks.notify.commands import interpret
from tests.fixtures.outputs import Mailbox, Synapse, access_lines, mail_text
from tests.fixtures.waiting import until

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


def test_commands_need_an_allowed_sender_and_act_on_every_route() -> None:
    here, there = AlertRoute(route(), "a", SITE), AlertRoute(route(), "b", SITE)
    alert = ev("ups-a", "power.on_battery")
    here.offer(alert, T0)
    there.offer(alert, T0)
    kw: dict[str, Any] = {
        "allowed": ["@alice:x"],
        "here": here,
        "everywhere": [here, there],
        "states": {},
        "now": T0 + 1,
    }
    sid = short_id(alert.id)
    assert interpret(f"!ack {sid}", "@bob:x", **kw) is None
    assert interpret("hello", "@alice:x", **kw) is None
    verb, reply = interpret(f"!ack {sid}", "@alice:x", **kw) or ("", "")
    assert verb == "!ack" and "acknowledged by @alice:x" in reply
    assert all(r.by_id[sid].acked_by == "@alice:x" for r in (here, there))
    assert "Cannot silence" in (interpret("!silence ups-b soon", "@alice:x", **kw) or ("", ""))[1]
    interpret("!silence ups-b 2h", "@alice:x", **kw)
    assert here.silenced("ups-b", T0 + 3600) and there.silenced("ups-b", T0 + 3600)
    assert (interpret("!what", "@alice:x", **kw) or ("", ""))[1].startswith("Commands:")


# -- real delivery ---------------------------------------------------------------------------


@pytest.fixture
async def make_notify(tmp_path: Path) -> AsyncIterator[Callable[..., NotifySink]]:
    sinks: list[NotifySink] = []

    def make(
        *routes: NotifyRoute,
        feeds: dict[str, list[str]] | None = None,
        state_dir: Path | None = None,
    ) -> NotifySink:
        box = Outbox(tmp_path / f"outbox-{len(sinks)}.sqlite")
        sink = NotifySink(routes, SITE, box, feeds=feeds, state_dir=state_dir)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.stop(timeout=1)


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
    # The route counts the delivery once apprise returns, a moment after the server has the mail.
    await until(lambda: sink.stats()["delayed"] == 1, 5, "the delivery counted as delayed")


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


def matrix_route(synapse: Synapse, allowed: list[str]) -> NotifyRoute:
    url = f"matrix://bot:botpw@127.0.0.1:{synapse.port}/#alerts"
    return route(url=url, name="matrix", group_wait=0.2, allow_commands=allowed)


async def test_matrix_429_waits_the_retry_after_the_homeserver_names(
    synapse_slow_login: Synapse, make_notify: Callable[..., NotifySink], tmp_path: Path
) -> None:
    """The bot's one login of the burst is spent just before the agent starts: its login gets
    one 429 with retry_after_ms (up to 8 s), waits exactly that, and gets in on the next try."""
    server = synapse_slow_login
    server.register("bot", "botpw")
    alice = server.register("alice", "alicepw")
    server.create_room(alice, "alerts", ["@bot:localhost"])
    body = {"type": "m.login.password", "user": "bot", "password": "botpw"}
    server.call("POST", "/_matrix/client/v3/login", json=body)  # the burst of one, spent
    sink = make_notify(matrix_route(server, [alice.user_id]), state_dir=tmp_path / "state")
    began = time.monotonic()
    await sink.start()
    listener = sink._listeners[0]
    await asyncio.wait_for(listener.ready.wait(), 30)
    took = time.monotonic() - began
    print(f"login rate-limited: in after {took:.2f} s")
    assert access_lines(server, "/_matrix/client/v3/login", 429) == 1
    assert access_lines(server, "/_matrix/client/v3/login", 200) == 2
    assert listener.logins == 1
    assert took >= 2.0  # waited the server's retry_after, not a 1 s backoff of its own


async def test_matrix_restart_and_relogin_keep_one_device(
    synapse: Synapse,
    make_notify: Callable[..., NotifySink],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restart reuses the stored token (no login at all); a revoked token means a password
    login that asks for the same device id. The bot's account keeps exactly one device."""
    from apprise.plugins.matrix import NotifyMatrix

    monkeypatch.setattr(NotifyMatrix, "request_rate_per_sec", 0)
    bot = synapse.register("bot", "botpw")
    alice = synapse.register("alice", "alicepw")
    synapse.create_room(alice, "alerts", [bot.user_id])
    # The registration's own device, gone so that only the agent's is counted.
    synapse.call("POST", "/_matrix/client/v3/logout", bot.token, json={})
    state = tmp_path / "state"
    state.mkdir()
    session = state / "matrix-matrix.json"

    async def run_once() -> tuple[int, str]:
        sink = make_notify(matrix_route(synapse, [alice.user_id]), state_dir=state)
        await sink.start()
        listener = sink._listeners[0]
        await asyncio.wait_for(listener.ready.wait(), 30)
        sink.publish_event(ev("ups-a", "power.on_battery", at=time.time()))  # apprise logs in
        await until(lambda: sink.stats()["sent"] >= 1, 20, "the alert")
        await sink.stop(timeout=1)
        return listener.logins, str(orjson.loads(session.read_bytes())["device_id"])

    logins, device = await run_once()
    assert logins == 1 and device
    assert session.stat().st_mode & 0o777 == 0o600  # it holds an access token
    assert await run_once() == (0, device)  # restart: the stored token, no login
    stored = orjson.loads(session.read_bytes())
    session.write_bytes(orjson.dumps({**stored, "access_token": "syt_revoked"}))
    assert await run_once() == (1, device)  # re-login: the same device
    token = orjson.loads(session.read_bytes())["access_token"]
    devices = {
        d["device_id"] for d in synapse.call("GET", "/_matrix/client/v3/devices", token)["devices"]
    }
    # The reader's device, and the one apprise's sender keeps in state/apprise: two, not six.
    assert device in devices and len(devices) == 2, devices
    assert (state / "apprise").stat().st_mode & 0o777 == 0o700
