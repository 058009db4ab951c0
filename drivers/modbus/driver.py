"""The Modbus driver: genset controllers and transfer switches over RTU (serial) or TCP.

What a device offers comes from its register-map profile (config/profiles/*.yaml, see
docs/profiles.md); this module adds what a profile cannot say by itself:

- generator semantics: one `generator.state` (stopped, cranking, warming, running, cooling,
  fault), mains availability, the load, fuel level and the hours of fuel left at the current
  load, and a start failure (the utility lost and the genset not running within
  `start_timeout`) as the `START_FAILED` flag;
- the events the flags mean, declared as data (`flag_events()`), which the site state turns
  into events on transitions;
- commands (start, stop, auto ...) as device actions, refused unless `allow_writes: true`.

Every device on one serial port shares one bus owner (modbus_bus.ModbusLink).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from facility_agent.core.driver import (
    ActionError,
    DeviceConfig,
    DeviceError,
    Driver,
    SimulatorFaces,
    own_config,
    with_keys,
)
from facility_agent.core.model import MetricValue, Sample, utcnow
from facility_agent.core.units import Duration
from facility_agent.drivers.modbus.bus import (
    ModbusExceptionError,
    ModbusLink,
    SerialParams,
    TcpParams,
    acquire_link,
    release_link,
)
from facility_agent.drivers.modbus.profile import (
    GENERATOR_STATES,
    Decoded,
    Profile,
    ProfileError,
    decode_block,
    load_profile,
)
from facility_agent.drivers.valid import UnknownLog

BAUDRATES = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200)


class ModbusDeviceConfig(DeviceConfig):
    """Site-file keys of a `driver: modbus` device (see drivers/README.md)."""

    #: RTU: the serial port (/dev/ttyUSB0, /dev/serial/by-id/...). Or `host` for Modbus TCP.
    serial: str | None = Field(default=None, min_length=1)
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    host: str | None = Field(default=None, min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    #: Modbus unit id (slave address). DSE controllers default to 10.
    unit: int = Field(default=1, ge=0, le=255)
    #: A bundled profile's file stem (`dse-gencomm`) or the path of a profile file.
    profile: str = Field(min_length=1)
    #: Deadline of ONE request; kept short so a dead unit holds the shared line only briefly.
    request_timeout: Duration = 0.5
    #: Extra tries of a request that met a timeout or a garbled reply (not for a unit that is
    #: already known silent: that would only hold the line).
    retries: int = Field(default=1, ge=0, le=5)
    #: Silence between frames; default 3.5 character times (1.75 ms above 19200 baud).
    frame_gap: Duration | None = None
    #: Generator: the utility lost and the genset not running after this long = start failure.
    start_timeout: Duration = 60.0
    #: Generator: for load % when the controller only gives watts.
    rated_kw: float | None = Field(default=None, gt=0)
    #: Generator: tank size and consumption, for the hours of fuel left at the current load.
    fuel_tank_litres: float | None = Field(default=None, gt=0)
    fuel_lph_idle: float = Field(default=0.0, ge=0)
    fuel_lph_full: float | None = Field(default=None, gt=0)
    #: Generator: fuel level (%) under which LOW_FUEL is raised.
    low_fuel: float = Field(default=20.0, ge=0, le=100)
    #: Mains voltage above which a controller without a mains-status register counts mains ok.
    mains_ok_voltage: float = Field(default=100.0, ge=0)
    interval: Duration = 2.0

    @field_validator("baudrate")
    @classmethod
    def _baud(cls, value: int) -> int:
        if value not in BAUDRATES:
            raise ValueError(f"baudrate must be one of {', '.join(map(str, BAUDRATES))}")
        return value

    @field_validator("profile")
    @classmethod
    def _profile_exists(cls, value: str) -> str:
        try:
            load_profile(value)
        except ProfileError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> ModbusDeviceConfig:
        if (self.serial is None) == (self.host is None):
            raise ValueError("give either serial: (Modbus RTU) or host: (Modbus TCP), not both")
        if self.serial is not None and not 1 <= self.unit <= 247:
            raise ValueError("on a serial line the unit id is 1..247")
        return self

    @property
    def link_params(self) -> SerialParams | TcpParams:
        if self.serial is not None:
            return SerialParams(
                self.serial, self.baudrate, self.bytesize, self.parity, self.stopbits
            )
        assert self.host is not None
        return TcpParams(self.host, self.port)


def _num(metrics: Mapping[str, MetricValue], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


#: Events of the flags this driver raises by itself; profiles declare their own on top.
GENERATOR_EVENTS: tuple[dict[str, str], ...] = (
    {
        "flag": "START_FAILED",
        "type": "generator.start_failed",
        "severity": "critical",
        "message": "{device}: the utility is lost and the generator is not running "
        "(state {generator.state})",
    },
    {
        "flag": "FAULT",
        "type": "generator.fault",
        "severity": "critical",
        "message": "{device}: generator fault ({generator.alarms})",
        "cleared_type": "generator.fault_cleared",
        "cleared_message": "{device}: generator fault cleared",
    },
    {
        "flag": "RUNNING",
        "type": "generator.running",
        "severity": "info",
        "message": "{device}: generator running",
        "cleared_type": "generator.stopped",
        "cleared_message": "{device}: generator no longer running (state {generator.state})",
    },
    {
        "flag": "LOW_FUEL",
        "type": "generator.low_fuel",
        "severity": "warning",
        "message": "{device}: fuel at {generator.fuel.level}% "
        "({generator.fuel.hours_left} h left at the current load)",
        "cleared_type": "generator.fuel_ok",
        "cleared_message": "{device}: fuel level back at {generator.fuel.level}%",
    },
)
MAINS_EVENTS: tuple[dict[str, str], ...] = (
    {
        "flag": "MAINS_FAIL",
        "type": "mains.lost",
        "severity": "warning",
        "message": "{device}: the utility (mains) is lost",
        "cleared_type": "mains.restored",
        "cleared_message": "{device}: the utility (mains) is back",
    },
)


class ModbusDriver(Driver):
    """One unit (a genset controller, a transfer switch ...) on a serial bus or a TCP server."""

    name = "modbus"
    config_model = ModbusDeviceConfig

    @classmethod
    def aim_at_simulator(cls, device: DeviceConfig, sim: SimulatorFaces) -> DeviceConfig | None:
        """Every simulated unit is on the simulator's one Modbus TCP server, a serial one too."""
        if "modbus" not in sim.ports:
            return None
        config = own_config(device, ModbusDeviceConfig)
        return with_keys(config, host="127.0.0.1", port=sim.ports["modbus"], serial=None)

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        self.cfg = config = own_config(config, ModbusDeviceConfig)
        self.profile: Profile = load_profile(config.profile)
        self.blocks = self.profile.blocks()
        self._link: ModbusLink | None = None
        self._mains_lost_since: float | None = None
        self._unknown_log = UnknownLog(config.id)
        self._hidden = {p.name for p in self.profile.points if p.hidden}

    def _conn(self) -> ModbusLink:
        if self._link is None:
            cfg = self.cfg
            self._link = acquire_link(
                cfg.link_params,
                request_timeout=cfg.request_timeout,
                retries=cfg.retries,
                gap=cfg.frame_gap,
            )
        return self._link

    # ---- poll ---------------------------------------------------------------------------

    async def poll(self) -> Sample:
        """Read every block of the profile (one request each), then derive the semantics."""
        decoded = Decoded()
        unit = self.cfg.unit

        async def job(link: ModbusLink) -> None:
            for block in self.blocks:
                values = await link.read(unit, block.table, block.address, block.count)
                decode_block(self.profile, block, values, decoded)

        await self._conn().transaction(job)
        if self.profile.kind == "generator":
            self._generator(decoded, time.monotonic())
        elif self.profile.kind == "ats":
            self._mains_flags(decoded)
        self._unknown_log.update(decoded.unknown, decoded.metrics)
        return Sample(
            device=self.cfg.id,
            ts=utcnow(),
            status=tuple(decoded.flags),
            metrics=decoded.metrics,
            unknown=tuple(sorted(set(decoded.unknown) - self._hidden)),
        )

    def _mains_flags(self, d: Decoded) -> bool | None:
        avail = d.metrics.get("mains.available")
        if not isinstance(avail, bool):
            volts = _num(d.metrics, "mains.voltage")
            if volts is None:
                return None
            avail = volts >= self.cfg.mains_ok_voltage
            d.metrics["mains.available"] = avail
        d.flag("MAINS_OK" if avail else "MAINS_FAIL")
        return avail

    def _generator(self, d: Decoded, now: float) -> None:
        cfg, m = self.cfg, d.metrics
        state = m.get("generator.state")
        if state not in GENERATOR_STATES:
            rpm = _num(m, "engine.speed")
            if rpm is not None:
                state = "running" if rpm >= self.profile.running_rpm else "stopped"
            else:
                state = None
        tripped = bool({"ALARM_SHUTDOWN", "ALARM_TRIP"} & set(d.flags))
        if tripped and state in ("stopped", "cranking", None):
            state = "fault"
        if isinstance(state, str):
            m["generator.state"] = state
            d.flag(state.upper())
        load = _num(m, "generator.load")
        watts = _num(m, "generator.realpower")
        if load is None and watts is not None and cfg.rated_kw:
            load = round(100.0 * watts / (cfg.rated_kw * 1000.0), 1)
            m["generator.load"] = load
        level = _num(m, "generator.fuel.level")
        if level is not None:
            hours = self._fuel_hours(level, load if state == "running" else None, m)
            if hours is not None:
                m["generator.fuel.hours_left"] = hours
            if level < cfg.low_fuel:
                d.flag("LOW_FUEL")
        mains = self._mains_flags(d)
        if mains is False:
            if self._mains_lost_since is None:
                self._mains_lost_since = now
            if state != "running" and now - self._mains_lost_since >= cfg.start_timeout:
                d.flag("START_FAILED")
        elif mains is True:
            self._mains_lost_since = None

    def _fuel_hours(
        self, level: float, load: float | None, m: Mapping[str, MetricValue]
    ) -> float | None:
        """Hours of fuel left at the current load: from the controller's fuel rate if it has
        one, else from the configured tank and consumption (idle..full load, linear)."""
        cfg = self.cfg
        if cfg.fuel_tank_litres is None:
            return None
        litres = cfg.fuel_tank_litres * max(level, 0.0) / 100.0
        rate = _num(m, "generator.fuel.rate")
        if rate is None:
            if load is None or cfg.fuel_lph_full is None:
                return None
            frac = min(max(load, 0.0), 100.0) / 100.0
            rate = cfg.fuel_lph_idle + (cfg.fuel_lph_full - cfg.fuel_lph_idle) * frac
        if rate <= 0:
            return None
        return round(litres / rate, 2)

    @classmethod
    def declared_events(cls) -> list[dict[str, str]]:
        return [dict(e) for e in (*GENERATOR_EVENTS, *MAINS_EVENTS)]

    def flag_events(self) -> list[dict[str, str]]:
        """The events this device's status flags mean (read by the agent's site state)."""
        events: list[dict[str, str]] = []
        if self.profile.kind == "generator":
            events += [dict(e) for e in GENERATOR_EVENTS]
        if self.profile.kind in ("generator", "ats"):
            events += [dict(e) for e in MAINS_EVENTS]
        for ev in self.profile.events:
            events.append({k: v for k, v in ev.model_dump().items() if v is not None})
        return events

    # ---- actions ------------------------------------------------------------------------

    async def actions(self) -> list[str]:
        return list(self.profile.commands)

    async def run_action(self, action: str, params: Mapping[str, str] | None = None) -> str:
        """Write one of the profile's commands (start, stop, auto ...)."""
        cfg = self.cfg
        cfg.require_writes()
        cmd = self.profile.commands.get(action)
        if cmd is None:
            known = ", ".join(self.profile.commands) or "none"
            raise ActionError(
                f"device {cfg.id}: profile {self.profile.name} has no command {action!r} "
                f"(known: {known})"
            )

        async def job(link: ModbusLink) -> str:
            try:
                await link.write(cfg.unit, cmd.table, cmd.address, cmd.values)
            except ModbusExceptionError as exc:
                raise ActionError(f"device {cfg.id}: {action} refused: {exc.reason}") from exc
            return f"{action} written to unit {cfg.unit} on {link.where}"

        return await self._conn().transaction(job)

    async def close(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            await release_link(link)

    def diagnostics(self) -> dict[str, Any]:
        """Blocks read per poll, for bug reports."""
        return {
            "profile": self.profile.name,
            "blocks": [(b.table, b.address, b.count) for b in self.blocks],
        }


__all__ = ["DeviceError", "ModbusDeviceConfig", "ModbusDriver"]
