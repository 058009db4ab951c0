"""The latest state of every device, and the events its transitions mean.

Events come from comparing a device's new state with its previous one, never from a single
reading, so the same flags polled twice never raise the same alarm twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files

import yaml

from facility_agent.core.model import DeviceState, Event, EventType, MetricValue, Sample, Severity


@dataclass(frozen=True, slots=True)
class Transition:
    """The outcome of applying one poll result: the new state, whether a subscriber would see a
    difference, and the events it raised."""

    state: DeviceState
    changed: bool
    events: list[Event]


def _num(metrics: Mapping[str, MetricValue], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def describe_battery(metrics: Mapping[str, MetricValue]) -> str:
    """`charge 98%, runtime 29 min`, from whatever of the two the device reports."""
    parts = []
    charge = _num(metrics, "battery.charge")
    runtime = _num(metrics, "battery.runtime")
    if charge is not None:
        parts.append(f"charge {charge:.0f}%")
    if runtime is not None:
        parts.append(
            f"runtime {runtime / 60:.0f} min" if runtime >= 120 else f"runtime {runtime:.0f} s"
        )
    return ", ".join(parts)


def _with_battery(text: str, metrics: Mapping[str, MetricValue]) -> str:
    battery = describe_battery(metrics)
    return f"{text} ({battery})" if battery else text


@dataclass(frozen=True)
class FlagEvent:
    """An event a status flag raises on its arrival (and optionally one when it goes), as data:
    the built-in power rules of config/status-flags.yaml, and those a driver declares (a Modbus
    profile's genset alarms ...).

    Messages may name `{device}`, `{battery}` and any metric (`{generator.fuel.level}`); a
    missing one reads `?`."""

    flag: str
    type: str
    severity: Severity
    message: str
    cleared_type: str | None = None
    cleared_message: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> FlagEvent:
        return cls(
            data["flag"],
            data["type"],
            Severity(data.get("severity", "warning")),
            data["message"],
            data.get("cleared_type"),
            data.get("cleared_message"),
        )

    def render(self, template: str, device: str, metrics: Mapping[str, MetricValue]) -> str:
        def one(match: re.Match[str]) -> str:
            key = match.group(1)
            if key == "device":
                return device
            if key == "battery":
                battery = describe_battery(metrics)
                return f" ({battery})" if battery else ""
            return str(metrics.get(key, "?"))

        return re.sub(r"\{([A-Za-z0-9_.-]+)\}", one, template)


def _status_flag_events() -> tuple[FlagEvent, ...]:
    text = (files("facility_agent.data") / "status-flags.yaml").read_text(encoding="utf-8")
    return tuple(FlagEvent.from_mapping(rule) for rule in yaml.safe_load(text))


#: The events of NUT's status words, raised for every device whatever its driver.
STATUS_FLAG_EVENTS: tuple[FlagEvent, ...] = _status_flag_events()


class SiteState:
    """Latest DeviceState per device; turns each poll result into a Transition."""

    def __init__(self, site: str) -> None:
        self.site = site
        self._states: dict[str, DeviceState] = {}
        self._declared: dict[str, tuple[FlagEvent, ...]] = {}

    def declare_flag_events(self, device: str, rules: Iterable[Mapping[str, str]]) -> None:
        """Events a device's own flags mean, on top of the built-in power rules."""
        self._declared[device] = tuple(FlagEvent.from_mapping(r) for r in rules)

    def get(self, device: str) -> DeviceState | None:
        return self._states.get(device)

    def all(self) -> dict[str, DeviceState]:
        return dict(self._states)

    def put(self, state: DeviceState) -> None:
        """Record a state that comes from the agent itself (a redundancy group's)."""
        self._states[state.device] = state

    def forget(self, device: str) -> None:
        self._states.pop(device, None)

    def _event(
        self,
        device: str,
        kind: EventType,
        severity: Severity,
        message: str,
        ts: datetime,
        **data: object,
    ) -> Event:
        return Event(self.site, device, str(kind), severity, message, ts=ts, data=data)

    def apply_sample(self, driver: str, sample: Sample) -> Transition:
        prev = self._states.get(sample.device)
        new = DeviceState(
            device=sample.device,
            driver=driver,
            ts=sample.ts,
            comm="ok",
            status=tuple(sample.status),
            metrics=dict(sample.metrics),
            unknown=tuple(sorted(set(sample.unknown))),
        )
        events: list[Event] = []
        if prev is not None and prev.comm == "lost":
            events.append(
                self._event(
                    sample.device,
                    EventType.DEVICE_COMM_RESTORED,
                    Severity.INFO,
                    f"{sample.device}: communication restored",
                    sample.ts,
                )
            )
        events.extend(self._flag_events(prev, new))
        self._states[sample.device] = new
        return Transition(new, not new.same_content(prev), events)

    def _flag_events(self, prev: DeviceState | None, new: DeviceState) -> list[Event]:
        before = set(prev.status) if prev is not None else set()
        after = set(new.status)
        dev, metrics, ts = new.device, new.metrics, new.ts
        events = []
        for d in (*STATUS_FLAG_EVENTS, *self._declared.get(dev, ())):
            if d.flag in after and d.flag not in before:
                text = d.render(d.message, dev, metrics)
                events.append(Event(self.site, dev, d.type, d.severity, text, ts=ts))
            elif d.flag in before and d.flag not in after and d.cleared_type:
                text = d.render(d.cleared_message or f"{{device}}: {d.flag} cleared", dev, metrics)
                events.append(Event(self.site, dev, d.cleared_type, Severity.INFO, text, ts=ts))
        if "OB" in before and "OB" not in after and "OL" in after:
            events.append(
                self._event(
                    dev,
                    EventType.POWER_ON_LINE,
                    Severity.INFO,
                    _with_battery(f"{dev} is back on line power", metrics),
                    ts,
                )
            )
        return events

    def apply_lost(self, device: str, driver: str, reason: str, ts: datetime) -> Transition:
        """The device missed its allowed number of polls (or failed in a way retries can't fix)."""
        prev = self._states.get(device)
        new = DeviceState(
            device=device,
            driver=driver,
            ts=ts,
            comm="lost",
            status=prev.status if prev else (),
            metrics=prev.metrics if prev else {},
            reason=reason,
            unknown=prev.unknown if prev else (),
        )
        events = []
        if prev is None or prev.comm != "lost":
            on_battery = prev is not None and "OB" in prev.status
            severity = Severity.CRITICAL if on_battery else Severity.WARNING
            tail = " while last known on battery" if on_battery else ""
            events.append(
                self._event(
                    device,
                    EventType.DEVICE_COMM_LOST,
                    severity,
                    f"{device}: communication lost{tail}: {reason}",
                    ts,
                    reason=reason,
                    last_status=list(prev.status) if prev else [],
                )
            )
        self._states[device] = new
        return Transition(new, not new.same_content(prev), events)
