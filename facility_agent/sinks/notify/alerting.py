"""Which events become chat messages, and when: filters, grouping, dedup, repeats, resolution,
acknowledgement, silences and topology inhibition. Pure logic, no I/O, a clock passed in, so
every rule can be tested without waiting.

Ideas from Alertmanager, in the small:

* An alert is keyed by (device, type). The same alert raised again while firing is a duplicate
  and sends nothing.
* `group_wait`: a group's first alert waits this long for others to join it, so a power cut that
  raises twenty events sends one message. `group_interval`: after that, at most one message per
  group this often. `repeat_interval`: a firing alert nobody acknowledged is sent again.
* Resolution is data (`RESOLVED_BY`): `power.on_line` resolves `power.on_battery`, and so on. A
  resolution is sent for every alert the route notified, whatever the resolving event's own
  severity.
* Inhibition from the power topology: `feeds` maps a device to the devices it powers
  (`{ups-a: [pdu-a], pdu-a: [srv-01, srv-02]}`, followed transitively). While a device has a
  firing alert of a type in `INHIBIT_SOURCES` (on battery, output off, FSD), alerts of types
  matching `INHIBIT_TARGETS` on anything it feeds fold into that alert: they are counted and
  named in its messages instead of arriving one by one. The mapping is derived from the site
  file's `topology:` section (device: [what feeds it], shared with the policy engine) by
  outputs.feeds_from().
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from facility_agent.config.outputs import NotifyRoute
from facility_agent.core.model import DeviceState, Event, Severity

#: Resolving event type -> the alert types it resolves.
RESOLVED_BY: dict[str, tuple[str, ...]] = {
    "power.on_line": ("power.on_battery", "power.off"),
    "power.battery_ok": ("power.low_battery",),
    "device.comm_restored": ("device.comm_lost",),
    "redundancy.restored": ("redundancy.degraded", "redundancy.lost"),
    "shutdown.completed": ("shutdown.started",),
    "shutdown.cancelled": ("shutdown.started",),
}
#: Alert types on a device that make alerts downstream of it fold into them.
INHIBIT_SOURCES = frozenset({"power.on_battery", "power.off", "power.fsd"})
#: Alert types (fnmatch) that fold into an upstream source alert.
INHIBIT_TARGETS = ("psu.*", "*.psu*", "power.*", "device.comm_lost", "redundancy.degraded",
                   "redundancy.lost")  # fmt: skip
#: Lines in one message before "... and N more".
MAX_LINES = 12

ICON = {Severity.CRITICAL: "🔴", Severity.WARNING: "🟠", Severity.INFO: "🔵"}
RESOLVED_ICON = "✅"


def short_id(event_id: str) -> str:
    """The last six characters of a ULID, lowercase: easy to type on a phone (`!ack k3f9qa`)."""
    return event_id[-6:].lower()


def hhmm(ts: float | datetime) -> str:
    dt = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    return dt.astimezone(UTC).strftime("%H:%M:%S UTC")


def human_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(eq=False)
class Alert:
    event: Event
    id: str
    raised: float
    notified: float | None = None
    last_sent: float | None = None
    resolved_by: Event | None = None
    resolved_at: float | None = None
    acked_by: str | None = None
    folded_into: Alert | None = None
    folded: list[Alert] = field(default_factory=list)

    @property
    def device(self) -> str:
        return self.event.device

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def firing(self) -> bool:
        return self.resolved_by is None


@dataclass(frozen=True)
class Message:
    """One chat message, ready to store in the outbox; the delivery adds a `delayed` mark."""

    title: str
    body: str
    severity: Severity
    kind: str  # firing | resolved | repeat | reply
    created: float
    alert_ids: tuple[str, ...] = ()


@dataclass
class _Group:
    pending: list[Alert] = field(default_factory=list)
    first_pending: float | None = None
    last_flush: float | None = None


def downstream(feeds: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Every device each device powers, directly or through others."""
    out: dict[str, set[str]] = {}
    for root in feeds:
        seen: set[str] = set()
        stack = list(feeds.get(root, ()))
        while stack:
            dev = stack.pop()
            if dev in seen or dev == root:
                continue
            seen.add(dev)
            stack.extend(feeds.get(dev, ()))
        out[root] = seen
    return out


class AlertRoute:
    """The alerting state of one route (one chat destination)."""

    def __init__(
        self,
        route: NotifyRoute,
        name: str,
        site: str,
        feeds: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.route = route
        self.name = name
        self.site = site
        self.powers = downstream(feeds or {})
        self.alerts: dict[tuple[str, str], Alert] = {}
        self.by_id: dict[str, Alert] = {}
        self.groups: dict[str, _Group] = {}
        self.silences: dict[str, float] = {}
        self.counts = {"alerts": 0, "duplicates": 0, "folded": 0, "filtered": 0}

    # -- input -----------------------------------------------------------------------------

    def wants(self, event: Event) -> bool:
        r = self.route
        if event.severity.rank < r.min_severity.rank:
            return False
        if r.events and not any(fnmatch.fnmatchcase(event.type, p) for p in r.events):
            return False
        return not any(fnmatch.fnmatchcase(event.type, p) for p in r.exclude_events)

    def offer(self, event: Event, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for target in RESOLVED_BY.get(event.type, ()):
            alert = self.alerts.get((event.device, target))
            if alert is not None and alert.firing:
                self._resolve(alert, event, now)
        if not self.wants(event):
            self.counts["filtered"] += 1
            return
        key = (event.device, event.type)
        existing = self.alerts.get(key)
        if existing is not None and existing.firing:
            self.counts["duplicates"] += 1
            return
        alert = Alert(event, short_id(event.id), now)
        self.alerts[key] = alert
        self.by_id[alert.id] = alert
        self.counts["alerts"] += 1
        self._queue(alert, now)

    def _resolve(self, alert: Alert, event: Event, now: float) -> None:
        alert.resolved_by = event
        alert.resolved_at = now
        del self.alerts[(alert.device, alert.type)]
        if alert.folded_into is not None:
            return  # it was never sent on its own; nothing to resolve in chat
        for child in alert.folded:
            child.folded_into = None
            if child.firing:
                self._queue(child, now)  # the source is gone: downstream alerts stand alone
        alert.folded.clear()
        if alert.notified is not None or alert in self._group(alert).pending:
            self._queue(alert, now)

    def _group(self, alert: Alert) -> _Group:
        key = alert.device if self.route.group_by == "device" else self.site
        return self.groups.setdefault(key, _Group())

    def _queue(self, alert: Alert, now: float) -> None:
        group = self._group(alert)
        if alert not in group.pending:
            group.pending.append(alert)
        if group.first_pending is None:
            group.first_pending = now

    # -- commands --------------------------------------------------------------------------

    def ack(self, alert_id: str, who: str) -> Alert | None:
        alert = self.by_id.get(alert_id.lower().strip())
        if alert is None:
            return None
        alert.acked_by = who
        return alert

    def silence(self, device: str, until: float) -> None:
        self.silences[device] = until

    def silenced(self, device: str, now: float) -> bool:
        until = self.silences.get(device)
        if until is None:
            return False
        if until <= now:
            del self.silences[device]
            return False
        return True

    def firing(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.firing and a.folded_into is None]

    # -- output ----------------------------------------------------------------------------

    def _source_upstream(self, alert: Alert) -> Alert | None:
        if not any(fnmatch.fnmatchcase(alert.type, p) for p in INHIBIT_TARGETS):
            return None
        for up, below in self.powers.items():
            if alert.device not in below:
                continue
            for source_type in INHIBIT_SOURCES:
                source = self.alerts.get((up, source_type))
                if source is not None and source.firing and source is not alert:
                    return source
        return None

    def due(self, now: float | None = None) -> list[Message]:
        """Messages to send now (and the state updated as if they were sent)."""
        now = time.time() if now is None else now
        out: list[Message] = []
        for key, group in self.groups.items():
            if group.first_pending is not None:
                wait_until = group.first_pending + self.route.group_wait
                if group.last_flush is not None:
                    wait_until = max(wait_until, group.last_flush + self.route.group_interval)
                if now >= wait_until:
                    msg = self._flush(key, group, now)
                    if msg is not None:
                        out.append(msg)
        repeats = [
            a
            for a in self.firing()
            if a.notified is not None
            and a.acked_by is None
            and a.last_sent is not None
            and now - a.last_sent >= self.route.repeat_interval
            and not self.silenced(a.device, now)
        ]
        if repeats:
            for a in repeats:
                a.last_sent = now
            out.append(self._render(repeats, [], now, kind="repeat"))
        return out

    def _flush(self, key: str, group: _Group, now: float) -> Message | None:
        pending, group.pending = group.pending, []
        group.first_pending = None
        firing: list[Alert] = []
        resolved: list[Alert] = []
        for alert in pending:
            if alert.firing:
                source = self._source_upstream(alert)
                if source is not None:
                    alert.folded_into = source
                    if alert not in source.folded:
                        source.folded.append(alert)
                    self.counts["folded"] += 1
                    if source.notified is not None and source not in pending:
                        continue  # the source's next message (repeat/resolve) names it
                    continue
                if self.silenced(alert.device, now):
                    alert.notified = now  # counts as seen: no late burst when the silence ends
                    alert.last_sent = now
                    continue
                firing.append(alert)
            else:
                resolved.append(alert)
        if not firing and not resolved:
            return None
        group.last_flush = now
        for alert in firing:
            alert.notified = now
            alert.last_sent = now
        kind = "firing" if firing else "resolved"
        return self._render(firing, resolved, now, kind=kind)

    def _render(
        self, firing: list[Alert], resolved: list[Alert], now: float, *, kind: str
    ) -> Message:
        """Short lines that fit a phone: the news first, the id to acknowledge last."""
        severity = max((a.event.severity for a in firing), key=lambda s: s.rank, default=None)
        lines: list[str] = []
        for alert in firing:
            ev = alert.event
            line = f"{ICON[ev.severity]} {ev.message}"
            if kind == "repeat":
                line += f" (still, since {hhmm(ev.ts)})"
            lines.append(line)
            if alert.folded:
                names = sorted({c.device for c in alert.folded})
                shown = ", ".join(names[:6]) + (f" +{len(names) - 6}" if len(names) > 6 else "")
                lines.append(f"   ↳ {len(alert.folded)} downstream alert(s) folded in: {shown}")
            lines.append(f"   {hhmm(ev.ts)} · !ack {alert.id}")
        for alert in resolved:
            ev = alert.event
            end = alert.resolved_by
            lasted = (end.ts - ev.ts).total_seconds() if end is not None else 0.0
            text = end.message if end is not None else f"{ev.device} resolved"
            lines.append(f"{RESOLVED_ICON} {text} (after {human_duration(lasted)}; was: {ev.type})")
        if len(lines) > MAX_LINES:
            more = len(lines) - MAX_LINES + 1
            lines = [*lines[: MAX_LINES - 1], f"… and {more} more line(s)"]
        if firing and len(firing) == 1 and not resolved:
            ev = firing[0].event
            head = "Repeat: " if kind == "repeat" else ""
            title = f"{head}[{self.site}] {ev.device}: {ev.type}"
        elif firing:
            crit = sum(1 for a in firing if a.event.severity is Severity.CRITICAL)
            title = f"[{self.site}] {len(firing)} alert(s), {crit} critical"
            if resolved:
                title += f", {len(resolved)} resolved"
            if kind == "repeat":
                title = "Repeat: " + title
        else:
            title = f"[{self.site}] resolved: " + ", ".join(
                sorted({a.device for a in resolved})[:4]
            )
        ids = tuple(a.id for a in firing)
        return Message(title, "\n".join(lines), severity or Severity.INFO, kind, now, ids)

    def status_text(self, states: Mapping[str, DeviceState], now: float) -> str:
        """`!status`: what is firing, then every device in one line each."""
        lines: list[str] = []
        firing = self.firing()
        if firing:
            lines.append(f"{len(firing)} firing:")
            for a in firing:
                ack = f" (ack {a.acked_by})" if a.acked_by else ""
                lines.append(f"{ICON[a.event.severity]} {a.event.message} · {a.id}{ack}")
        else:
            lines.append("No alert firing.")
        for device in sorted(states):
            st = states[device]
            flags = " ".join(st.status) or "-"
            silenced = " (silenced)" if self.silenced(device, now) else ""
            lines.append(f"{device}: comm {st.comm}, {flags}{silenced}")
        return "\n".join(lines)
