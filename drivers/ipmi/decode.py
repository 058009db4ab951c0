"""What IPMI readings mean to the agent: sensors to metrics, PSUs to redundancy, SEL to events.

Pure functions over plain data, no I/O and no pyghmi: the driver's worker thread turns pyghmi's
objects into `SensorValue`s and raw SEL records, and everything here can be tested on its own.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from facility_agent.core.model import MetricValue

#: pyghmi's health bits (pyghmi.constants.Health): 0 ok, 1 warning, 2 critical, 4 failed.
_HEALTH = ((4, "failed"), (2, "critical"), (1, "warning"))

#: PSU status values, worst first; `psu.N.status` takes the worst that applies.
PSU_STATUSES = ("absent", "failed", "input_lost", "predictive_failure", "ok")


@dataclass(frozen=True, slots=True)
class SensorValue:
    """One sensor as read: pyghmi's SensorReading reduced to plain, picklable data."""

    name: str
    type: str
    value: float | None
    units: str
    health: int
    states: tuple[str, ...]
    #: The reading said "reading unavailable" or "scanning disabled" (IPMI 2.0 table 35-15,
    #: byte 2 bits 5 and 6): no value and no state, not a reading at all.
    unavailable: bool = False


def slug(name: str) -> str:
    """A sensor name as a metric-name segment: `PSU1 Status` -> `psu1_status`."""
    text = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return text or "unnamed"


def health_name(health: int) -> str:
    for bit, name in _HEALTH:
        if health & bit:
            return name
    return "ok"


def psu_status(states: Iterable[str]) -> str:
    """The worst condition among a PSU sensor's asserted states (pyghmi's wording)."""
    text = [s.lower() for s in states]
    if any("absent" in s for s in text) or not any("presen" in s for s in text):
        return "absent"
    worst = "predictive_failure" if any("predictive" in s for s in text) else "ok"
    if any(("input lost" in s or "ac lost" in s or "out of range" in s) for s in text):
        worst = "input_lost"
    if any("fail" in s and "predictive" not in s for s in text):
        worst = "failed"
    return worst


def is_psu(sensor: SensorValue) -> bool:
    return sensor.type.lower() == "power supply" and sensor.value is None


def psu_number(name: str, fallback: int) -> int:
    """PSU slot from its name (`PSU2 Status`, `PS 1`, `Power Supply 3`), else its order."""
    match = re.search(r"(?:psu|ps|power\s*supply)\s*_?(\d+)", name, re.IGNORECASE)
    return int(match.group(1)) if match else fallback


def redundancy(statuses: Sequence[str]) -> str:
    """`ok` when every PSU is ok, `degraded` while at least one still carries the server,
    `lost` when none does (the BMC then lives on standby power, if at all)."""
    if not statuses:
        return "unknown"
    good = sum(1 for s in statuses if s in ("ok", "predictive_failure"))
    if good == 0:
        return "lost"
    return "ok" if good == len(statuses) else "degraded"


_POWER_NAME = re.compile(r"(sys|total|system|consumption|pwr\s*consumption|input\s*power)", re.I)
_AMBIENT_NAME = re.compile(r"(inlet|ambient|intake|room)", re.I)


@dataclass(frozen=True, slots=True)
class Summary:
    metrics: dict[str, MetricValue]
    flags: tuple[str, ...]
    #: Metrics this poll could not read (an unavailable sensor, and what derives from it).
    unknown: tuple[str, ...] = ()


def summarize(
    sensors: Sequence[SensorValue], powered: bool | None, power_sensor: str | None = None
) -> Summary:
    """Metrics and status flags of one server from its sensors and chassis power state."""
    metrics: dict[str, MetricValue] = {}
    flags: list[str] = []
    if powered is not None:
        flags.append("POWER_ON" if powered else "POWER_OFF")
        metrics["server.power.state"] = "on" if powered else "off"
    watts: list[SensorValue] = []
    psus: dict[int, str | None] = {}
    ambient: float | None = None
    seen: set[str] = set()
    unknown: list[str] = []
    for sensor in sensors:
        key = slug(sensor.name)
        while key in seen:  # two sensors with one name: keep both
            key += "_"
        seen.add(key)
        if sensor.unavailable:
            # No value, no state, no health: an unknown stays unknown (never 0, never "ok").
            kind = "value" if sensor.units else "states"
            unknown += [f"sensor.{key}.health", f"sensor.{key}.{kind}"]
            if sensor.units == "W":
                watts.append(sensor)
            if is_psu(sensor):
                n = psu_number(sensor.name, len(psus) + 1)
                while n in psus:
                    n += 1
                psus[n] = None
            continue
        metrics[f"sensor.{key}.health"] = health_name(sensor.health)
        if sensor.value is not None:
            metrics[f"sensor.{key}.value"] = round(float(sensor.value), 3)
            if sensor.units == "W":
                watts.append(sensor)
            if (
                ambient is None
                and sensor.type.lower() == "temperature"
                and _AMBIENT_NAME.search(sensor.name)
            ):
                ambient = float(sensor.value)
        elif sensor.states:
            metrics[f"sensor.{key}.states"] = ",".join(sensor.states)
        if is_psu(sensor):
            n = psu_number(sensor.name, len(psus) + 1)
            while n in psus:
                n += 1
            psus[n] = psu_status(sensor.states)
    power = _server_power(watts, power_sensor)
    if power is not None:
        metrics["server.power"] = round(power, 1)
    elif any(s.unavailable for s in watts):
        unknown.append("server.power")
    if ambient is not None:
        metrics["ambient.temperature"] = round(ambient, 1)
    elif any(
        s.unavailable and s.type.lower() == "temperature" and _AMBIENT_NAME.search(s.name)
        for s in sensors
    ):
        unknown.append("ambient.temperature")
    if psus:
        metrics["psu.count"] = len(psus)
        known = [s for s in psus.values() if s is not None]
        for n in sorted(psus):
            status = psus[n]
            if status is None:
                unknown.append(f"psu.{n}.status")
            else:
                metrics[f"psu.{n}.status"] = status
        if len(known) == len(psus):
            metrics["psu.redundancy"] = redundancy(known)
        else:
            unknown.append("psu.redundancy")
        if any(s == "failed" for s in known):
            flags.append("PSU_FAIL")
        if any(s == "input_lost" for s in known):
            flags.append("PSU_NO_INPUT")
        # One known bad PSU is enough to know redundancy is not ok, whatever the others say.
        if known and redundancy(known) != "ok":
            flags.append("NOT_REDUNDANT")
    if any(health_name(s.health) in ("critical", "failed") for s in sensors if not s.unavailable):
        flags.append("SENSOR_CRIT")
    return Summary(metrics, tuple(flags), tuple(sorted(set(unknown))))


def _server_power(watts: Sequence[SensorValue], wanted: str | None) -> float | None:
    """The server's draw: the named sensor, a system/total one, else the sum of all W sensors."""
    if wanted is not None:
        for s in watts:
            if s.name == wanted and s.value is not None and not s.unavailable:
                return float(s.value)
        return None
    for s in watts:
        if _POWER_NAME.search(s.name):
            return None if s.unavailable or s.value is None else float(s.value)
    if not watts or any(s.unavailable for s in watts):
        return None  # a sum with an unread term is no reading
    return sum(float(s.value or 0.0) for s in watts)


# --------------------------------------------------------------------------------------------
# SEL
# --------------------------------------------------------------------------------------------

#: Sensor types (IPMI 2.0 table 42-3).
POWER_SUPPLY, POWER_UNIT = 0x08, 0x09


@dataclass(frozen=True, slots=True)
class SelRecord:
    """One 16-byte SEL record (IPMI 2.0 section 32.1)."""

    record_id: int
    record_type: int
    timestamp: int
    sensor_type: int
    sensor_number: int
    assertion: bool
    event_type: int
    offset: int

    @classmethod
    def parse(cls, data: bytes) -> SelRecord:
        if len(data) < 16:
            raise ValueError(f"SEL record of {len(data)} bytes, expected 16")
        record_id, record_type, ts = struct.unpack_from("<HBI", data, 0)
        dir_type, ed1 = data[12], data[13]
        return cls(
            record_id=record_id,
            record_type=record_type,
            timestamp=ts,
            sensor_type=data[10],
            sensor_number=data[11],
            assertion=not dir_type & 0x80,
            event_type=dir_type & 0x7F,
            offset=ed1 & 0x0F,
        )


#: SEL kinds that matter, as (transient status flag, description).
SEL_KINDS = {
    "psu_failure": ("SEL_PSU_FAILURE", "power supply failure"),
    "psu_input_lost": ("SEL_AC_LOST", "power supply input (AC) lost"),
    "ac_lost": ("SEL_AC_LOST", "AC lost"),
}


def sel_kind(rec: SelRecord) -> str | None:
    """Which entries are worth an event: PSU failures and lost input, the power unit's AC loss.

    Only system event records (type 2) with sensor-specific readings (0x6f) are read; OEM
    records and everything else are left alone."""
    if rec.record_type != 0x02 or rec.event_type != 0x6F or not rec.assertion:
        return None
    if rec.sensor_type == POWER_SUPPLY:
        if rec.offset == 1:
            return "psu_failure"
        if rec.offset in (3, 4):
            return "psu_input_lost"
    if rec.sensor_type == POWER_UNIT and rec.offset == 4:
        return "ac_lost"
    return None


# --------------------------------------------------------------------------------------------
# SDR id strings
# --------------------------------------------------------------------------------------------


def decode_6bit_ascii(data: Sequence[int]) -> str:
    """IPMI's packed 6-bit ASCII (section 43.15): four characters in every three bytes.

    pyghmi 1.6.19 loops forever on such id strings (it never consumes its input), and real BMCs
    and OpenIPMI's sdrcomp do write them, so the driver decodes them here instead."""
    out: list[str] = []
    bits = 0
    nbits = 0
    for byte in data:
        bits |= byte << nbits
        nbits += 8
        while nbits >= 6:
            out.append(chr((bits & 0x3F) + 0x20))
            bits >>= 6
            nbits -= 6
    return "".join(out).rstrip()
