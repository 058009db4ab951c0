"""The shared vocabulary of the agent: what a driver returns, what the site knows, what happened.

No I/O here. Every other module speaks these types, so drivers, policy and sinks never need to
know each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from ulid import ULID

#: A metric value as it travels from a device to a sink. Numbers stay numbers; NUT's textual
#: variables (ups.model, ups.serial ...) stay strings.
MetricValue = float | int | str | bool

Comm = Literal["ok", "lost"]


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso_ts(ts: datetime) -> str:
    """Timestamps as the contract shows them: UTC, milliseconds, a `Z`."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Reading:
    """One named value of one device at one instant, the unit a sink such as InfluxDB writes."""

    device: str
    name: str
    value: MetricValue
    ts: datetime


@dataclass(frozen=True, slots=True)
class Sample:
    """What one successful poll of a device produced.

    `status` holds flags (NUT's for power devices); `metrics` uses NUT's variable names wherever
    NUT has one.
    """

    device: str
    ts: datetime
    status: tuple[str, ...] = ()
    metrics: Mapping[str, MetricValue] = field(default_factory=dict)
    #: Metrics the device answered with a value that is not a reading (out of the declared
    #: range, or a sentinel such as -1 or 0xFFFF for "not measured"): absent from `metrics`,
    #: named here so that nobody mistakes a missing value for a vanished sensor.
    unknown: tuple[str, ...] = ()

    def readings(self) -> list[Reading]:
        return [Reading(self.device, k, v, self.ts) for k, v in self.metrics.items()]


@dataclass(frozen=True, slots=True)
class DeviceState:
    """The latest known state of one device, as published on `P/{device}/state`."""

    device: str
    driver: str
    ts: datetime
    comm: Comm
    status: tuple[str, ...] = ()
    metrics: Mapping[str, MetricValue] = field(default_factory=dict)
    #: Why communication is lost; never contains a secret (drivers redact before raising).
    reason: str | None = None
    #: Metrics whose last value was not a reading (see `Sample.unknown`); sorted.
    unknown: tuple[str, ...] = ()

    def payload(self, site: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ts": iso_ts(self.ts),
            "site": site,
            "device": self.device,
            "driver": self.driver,
            "comm": self.comm,
            "status": list(self.status),
            "metrics": dict(self.metrics),
        }
        if self.unknown:
            body["unknown"] = list(self.unknown)
        if self.reason:
            body["reason"] = self.reason
        return body

    def same_content(self, other: DeviceState | None) -> bool:
        """True when nothing a subscriber sees changed (the timestamp aside)."""
        return (
            other is not None
            and other.comm == self.comm
            and other.status == self.status
            and dict(other.metrics) == dict(self.metrics)
            and other.reason == self.reason
            and other.unknown == self.unknown
        )


def new_event_id() -> str:
    return str(ULID())


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened. `id` is fixed at creation so re-deliveries can be deduplicated."""

    site: str
    device: str
    type: str
    severity: Severity
    message: str
    ts: datetime = field(default_factory=utcnow)
    id: str = field(default_factory=new_event_id)
    data: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "ts": iso_ts(self.ts),
            "site": self.site,
            "device": self.device,
            "type": self.type,
            "severity": str(self.severity),
            "message": self.message,
        }
        if self.data:
            body["data"] = dict(self.data)
        return body


class EventType(StrEnum):
    """Event types with the exact names the contract promises (and a few of our own)."""

    POWER_ON_BATTERY = "power.on_battery"
    POWER_ON_LINE = "power.on_line"
    POWER_LOW_BATTERY = "power.low_battery"
    POWER_BATTERY_OK = "power.battery_ok"
    POWER_REPLACE_BATTERY = "power.replace_battery"
    POWER_OVERLOAD = "power.overload"
    POWER_FSD = "power.fsd"
    POWER_BYPASS = "power.bypass"
    POWER_OFF = "power.off"
    DEVICE_COMM_LOST = "device.comm_lost"
    DEVICE_COMM_RESTORED = "device.comm_restored"
    REDUNDANCY_DEGRADED = "redundancy.degraded"
    REDUNDANCY_RESTORED = "redundancy.restored"
    SHUTDOWN_STARTED = "shutdown.started"
    SHUTDOWN_COMPLETED = "shutdown.completed"
    SHUTDOWN_CANCELLED = "shutdown.cancelled"
