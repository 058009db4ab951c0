"""The physical model of the simulated site: one object that every protocol face reads.

Power flows utility/generator -> ATS -> UPS -> PDU feed -> server PSU. Each face (NUT, SNMP,
Modbus, IPMI) only translates this model into its protocol, so when the utility fails here the
UPS goes on battery over NUT, the PDU loses a feed over SNMP and the servers see a PSU go over
IPMI, all at the same simulated instant.

The model is plain Python, synchronous and deterministic: it has no clock of its own and no
randomness; `step(dt)` moves it forward by `dt` simulated seconds. Whoever owns a clock (the
scenario runner, the simulator's ticking task, a unit test) calls it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# --------------------------------------------------------------------------------------------
# Configuration (the layout of the site, from YAML)
# --------------------------------------------------------------------------------------------

Name = str


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UtilityConfig(_Cfg):
    voltage: float = Field(default=230.0, gt=0)
    frequency: float = Field(default=50.0, gt=0)


class GeneratorConfig(_Cfg):
    name: Name = "gen-1"
    rated_kw: float = Field(default=20.0, gt=0)
    #: Seconds of utility loss before the controller cranks (rides out short blips).
    start_delay: float = Field(default=3.0, ge=0)
    #: Seconds of cranking per attempt, then a rest before the next attempt.
    crank_time: float = Field(default=3.0, gt=0)
    crank_rest: float = Field(default=2.0, ge=0)
    crank_attempts: int = Field(default=3, ge=1)
    #: Running without load before the ATS may transfer to it.
    warmup: float = Field(default=5.0, ge=0)
    #: Running without load after the utility is back, before it stops.
    cooldown: float = Field(default=10.0, ge=0)
    tank_litres: float = Field(default=200.0, gt=0)
    fuel_litres: float | None = Field(default=None, ge=0)
    idle_lph: float = Field(default=1.5, ge=0)
    full_load_lph: float = Field(default=6.0, ge=0)
    voltage: float = Field(default=230.0, gt=0)
    frequency: float = Field(default=50.0, gt=0)
    auto_start: bool = True


class AtsConfig(_Cfg):
    name: Name = "ats-1"
    #: Seconds a source must be healthy before the switch moves to it when the current is dead.
    transfer_delay: float = Field(default=2.0, ge=0)
    #: Seconds the utility must be back before the switch leaves a live generator.
    retransfer_delay: float = Field(default=10.0, ge=0)


class UpsConfig(_Cfg):
    name: Name
    description: str = ""
    mfr: str = "FacilitySim"
    model: str = "SimUPS 3000"
    serial: str = ""
    #: What feeds it: the ATS's name, or "utility".
    input: Name = "ats-1"
    realpower_nominal: float = Field(default=2700.0, gt=0)
    #: Nameplate battery energy. The real energy is this times `battery_health`.
    battery_wh: float = Field(default=1000.0, gt=0)
    #: 1.0 = as new. Below 1 the battery is "older than it claims": the UPS still computes its
    #: runtime from the nameplate capacity, so the reported runtime is optimistic.
    battery_health: float = Field(default=1.0, gt=0, le=1.5)
    battery_voltage_nominal: float = Field(default=48.0, gt=0)
    efficiency: float = Field(default=0.92, gt=0, le=1)
    #: Charging power in W; default: a full recharge from empty in 4 hours.
    recharge_w: float | None = Field(default=None, gt=0)
    charge: float = Field(default=100.0, ge=0, le=100)
    charge_low: float = Field(default=20.0, ge=0, le=100)
    runtime_low: float = Field(default=120.0, ge=0)
    delay_shutdown: float = Field(default=20.0, ge=0)
    delay_start: float = Field(default=30.0, ge=0)


class PduConfig(_Cfg):
    name: Name
    #: The UPS (or ATS, or "utility") this PDU's input is plugged into.
    feed: Name
    description: str = ""


class PsuConfig(_Cfg):
    feed: Name  # a PDU name
    outlet: int = Field(ge=1)


class ServerConfig(_Cfg):
    name: Name
    load_w: float = Field(default=250.0, ge=0)
    psus: list[PsuConfig] = Field(min_length=1, max_length=4)
    os_shutdown_s: float = Field(default=20.0, ge=0)
    boot_s: float = Field(default=30.0, ge=0)
    power: Literal["on", "off"] = "on"
    #: BIOS "restore on AC power loss": boot when power returns after a loss.
    restore_on_power: bool = True


class UplinkConfig(_Cfg):
    name: Name
    description: str = ""
    up: bool = True
    latency_ms: float = Field(default=5.0, ge=0)


class SiteConfig(_Cfg):
    name: str = "sim-site"
    utility: UtilityConfig = UtilityConfig()
    generator: GeneratorConfig | None = None
    ats: AtsConfig | None = None
    ups: list[UpsConfig] = []
    pdus: list[PduConfig] = []
    servers: list[ServerConfig] = []
    uplinks: list[UplinkConfig] = []

    @model_validator(mode="after")
    def _check_references(self) -> SiteConfig:
        names: list[str] = ["utility"]
        if self.generator:
            names.append(self.generator.name)
        if self.ats:
            names.append(self.ats.name)
        names += [u.name for u in self.ups] + [p.name for p in self.pdus]
        names += [s.name for s in self.servers] + [n.name for n in self.uplinks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"names must be unique across the site, repeated: {dupes}")
        if self.ats and not self.generator:
            raise ValueError("an ats needs a generator to transfer to")
        sources = {"utility"} | ({self.ats.name} if self.ats else set())
        for u in self.ups:
            if u.input not in sources:
                raise ValueError(
                    f"ups {u.name!r}: input {u.input!r} is not one of {sorted(sources)}"
                )
        feeds = sources | {u.name for u in self.ups}
        for p in self.pdus:
            if p.feed not in feeds:
                raise ValueError(f"pdu {p.name!r}: feed {p.feed!r} is not one of {sorted(feeds)}")
        pdus = {p.name for p in self.pdus}
        used: set[tuple[str, int]] = set()
        for s in self.servers:
            for psu in s.psus:
                if psu.feed not in pdus:
                    raise ValueError(f"server {s.name!r}: psu feed {psu.feed!r} is not a pdu")
                if (psu.feed, psu.outlet) in used:
                    raise ValueError(
                        f"server {s.name!r}: outlet {psu.outlet} of {psu.feed!r} is already used"
                    )
                used.add((psu.feed, psu.outlet))
        return self


class SiteConfigError(ValueError):
    """The site file is not valid; the message names every problem with its key path."""


def _validation_message(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid simulated site"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Errors a face can translate into its protocol's error replies
# --------------------------------------------------------------------------------------------


class SiteError(Exception):
    """A request the model refuses. `code` uses NUT's error names, which faces map as needed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


T = TypeVar("T")


def _named(table: Mapping[str, T], name: str, what: str, code: str = "UNKNOWN-DEVICE") -> T:
    """`table[name]`, or the SiteError the faces answer for a name the site does not have."""
    try:
        return table[name]
    except KeyError:
        raise SiteError(code, f"no {what} named {name!r}") from None


# --------------------------------------------------------------------------------------------
# Equipment
# --------------------------------------------------------------------------------------------


class _NamedConfig(Protocol):
    @property
    def name(self) -> str: ...


class _Equipment:
    """A named piece of the site: its name is its config's."""

    cfg: _NamedConfig

    @property
    def name(self) -> str:
        return self.cfg.name


class _Source:
    """A power source: its config's voltage and frequency while it is live, none otherwise."""

    cfg: UtilityConfig | GeneratorConfig

    @property
    def live(self) -> bool:
        raise NotImplementedError

    @property
    def voltage(self) -> float:
        return self.cfg.voltage if self.live else 0.0

    @property
    def frequency(self) -> float:
        return self.cfg.frequency if self.live else 0.0


@dataclass
class Utility(_Source):
    cfg: UtilityConfig
    up: bool = True

    @property
    def live(self) -> bool:
        return self.up


GeneratorState = Literal["stopped", "cranking", "warming", "running", "cooling", "fault"]

#: Crank failures meaning "every attempt fails until told otherwise".
ALWAYS = 1_000_000


@dataclass
class Generator(_Equipment, _Source):
    cfg: GeneratorConfig
    state: GeneratorState = "stopped"
    fuel_litres: float = 0.0
    #: None = automatic (runs while the ATS needs it); True = forced run; False = forced off.
    manual: bool | None = None
    #: How many of the coming crank attempts fail (scenario fault injection).
    fail_cranks: int = 0
    fault_reason: str = ""
    attempt: int = 0
    cranks_total: int = 0
    starts: int = 0
    run_hours: float = 0.0
    load_w: float = 0.0
    demand: bool = False
    _timer: float = 0.0
    _resting: bool = False

    @property
    def available(self) -> bool:
        """True when it can carry load (running, warm)."""
        return self.state == "running"

    @property
    def spinning(self) -> bool:
        return self.state in ("warming", "running", "cooling")

    @property
    def live(self) -> bool:
        return self.spinning

    @property
    def rpm(self) -> int:
        if self.spinning:
            return 1500
        return 200 if self.state == "cranking" and not self._resting else 0

    @property
    def fuel_percent(self) -> float:
        return 100.0 * self.fuel_litres / self.cfg.tank_litres

    def _wanted(self) -> bool:
        if self.manual is not None:
            return self.manual
        return self.cfg.auto_start and self.demand

    def reset(self) -> None:
        """Clear a fault (an operator pressing reset on the controller)."""
        if self.state == "fault":
            self.state = "stopped"
            self.fault_reason = ""
            self._timer = 0.0
            self.attempt = 0

    def trip(self, reason: str) -> None:
        self.state = "fault"
        self.fault_reason = reason
        self._timer = 0.0
        self.load_w = 0.0

    def step(self, dt: float) -> None:
        wanted = self._wanted()
        self._timer += dt
        if self.state == "stopped":
            if not wanted:
                self._timer = 0.0
            elif self._timer >= self.cfg.start_delay:
                self._begin_crank(1)
        elif self.state == "cranking":
            if not wanted:
                self.state, self._timer = "stopped", 0.0
            elif self._resting:
                if self._timer >= self.cfg.crank_rest:
                    self._begin_crank(self.attempt + 1)
            elif self._timer >= self.cfg.crank_time:
                if self.fail_cranks > 0:
                    self.fail_cranks -= 1
                    if self.attempt >= self.cfg.crank_attempts:
                        self.trip(f"failed to start after {self.attempt} crank attempts")
                    else:
                        self._resting, self._timer = True, 0.0
                else:
                    self.state, self._timer = "warming", 0.0
                    self.starts += 1
        elif self.state == "warming":
            if not wanted:
                self.state, self._timer = "cooling", 0.0
            elif self._timer >= self.cfg.warmup:
                self.state, self._timer = "running", 0.0
        elif self.state == "running":
            if not wanted:
                self.state, self._timer = "cooling", 0.0
        elif self.state == "cooling":
            if wanted:
                self.state, self._timer = "running", 0.0
            elif self._timer >= self.cfg.cooldown:
                self.state, self._timer = "stopped", 0.0
        if self.state != "running":
            self.load_w = 0.0
        if self.spinning:
            self.run_hours += dt / 3600.0
            frac = min(self.load_w / (self.cfg.rated_kw * 1000.0), 1.0)
            lph = self.cfg.idle_lph + (self.cfg.full_load_lph - self.cfg.idle_lph) * frac
            self.fuel_litres = max(0.0, self.fuel_litres - lph * dt / 3600.0)
            if self.fuel_litres <= 0.0:
                self.trip("out of fuel")

    def _begin_crank(self, attempt: int) -> None:
        self.state = "cranking"
        self.attempt = attempt
        self.cranks_total += 1
        self._resting = False
        self._timer = 0.0


AtsSource = Literal["utility", "generator"]


@dataclass
class Ats(_Equipment):
    cfg: AtsConfig
    source: AtsSource = "utility"
    live: bool = True
    transfers: int = 0
    _utility_for: float = 1e9
    _generator_for: float = 0.0

    def step(self, dt: float, utility_ok: bool, generator_ok: bool) -> None:
        self._utility_for = self._utility_for + dt if utility_ok else 0.0
        self._generator_for = self._generator_for + dt if generator_ok else 0.0
        current_ok = utility_ok if self.source == "utility" else generator_ok
        if current_ok:
            if (
                self.source == "generator"
                and utility_ok
                and self._utility_for >= self.cfg.retransfer_delay
            ):
                self._switch("utility")
        elif utility_ok and self._utility_for >= self.cfg.transfer_delay:
            self._switch("utility")
        elif generator_ok and self._generator_for >= self.cfg.transfer_delay:
            self._switch("generator")
        self.live = utility_ok if self.source == "utility" else generator_ok

    def _switch(self, source: AtsSource) -> None:
        if source != self.source:
            self.source = source
            self.transfers += 1


BeeperStatus = Literal["enabled", "disabled", "muted"]

#: Instant commands every simulated UPS offers, with NUT's descriptions.
UPS_COMMANDS: dict[str, str] = {
    "beeper.disable": "Disable the UPS beeper",
    "beeper.enable": "Enable the UPS beeper",
    "beeper.mute": "Temporarily mute the UPS beeper",
    "load.off": "Turn off the load immediately",
    "load.on": "Turn on the load immediately",
    "shutdown.return": "Turn off the load and return when power is back",
    "shutdown.stayoff": "Turn off the load and remain off",
    "shutdown.stop": "Stop a shutdown in progress",
    "test.battery.start": "Start a battery test",
    "test.battery.stop": "Stop the battery test",
}

#: Writable variables: name -> (NUT type, minimum, maximum) ; strings have no bounds.
UPS_RW_VARS: dict[str, tuple[str, float, float]] = {
    "battery.charge.low": ("NUMBER", 0, 100),
    "battery.runtime.low": ("NUMBER", 0, 86400),
    "ups.delay.shutdown": ("NUMBER", 0, 3600),
    "ups.delay.start": ("NUMBER", 0, 3600),
    "ups.id": ("STRING:32", 0, 0),
}

#: How long a battery test keeps the UPS on battery.
BATTERY_TEST_S = 10.0


@dataclass
class Ups(_Equipment):
    """A UPS: it starts as its site file entry says (`__post_init__`), then the model and the
    NUT clients change it."""

    cfg: UpsConfig
    #: What the battery holds, and its health (1.0 = as new).
    energy_wh: float = field(init=False)
    health: float = field(init=False)
    output_on: bool = True
    input_ok: bool = True
    input_voltage: float = 0.0
    input_frequency: float = 0.0
    load_w: float = 0.0
    #: The settings NUT clients may change (UPS_RW_VARS).
    charge_low: float = field(init=False)
    runtime_low: float = field(init=False)
    delay_shutdown: float = field(init=False)
    delay_start: float = field(init=False)
    ups_id: str = field(init=False)
    beeper: BeeperStatus = "enabled"
    fsd: bool = False
    #: Faults injected by scenarios: the agent-facing interface dies, the model carries on.
    comm_dead: bool = False
    driver_down: bool = False
    replace_battery: bool = False
    test_result: str = "No test initiated"
    off_reason: str = ""
    shutdown_in: float | None = None
    shutdown_kind: Literal["return", "stayoff"] = "return"
    #: Output is off and comes back once input power has been present for delay_start.
    return_pending: bool = False
    test_remaining: float | None = None
    _restart_timer: float = 0.0

    def __post_init__(self) -> None:
        c = self.cfg
        self.health = c.battery_health
        self.energy_wh = self.capacity_wh * c.charge / 100.0
        self.charge_low = c.charge_low
        self.runtime_low = c.runtime_low
        self.delay_shutdown = c.delay_shutdown
        self.delay_start = c.delay_start
        self.ups_id = c.name

    @property
    def capacity_wh(self) -> float:
        """The energy the battery really holds when full."""
        return self.cfg.battery_wh * self.health

    @property
    def recharge_w(self) -> float:
        return self.cfg.recharge_w or self.cfg.battery_wh / 4.0

    @property
    def charge(self) -> float:
        """State of charge in %, as the UPS measures it (correct whatever the battery's age)."""
        return 100.0 * self.energy_wh / self.capacity_wh if self.capacity_wh else 0.0

    @property
    def on_battery(self) -> bool:
        return self.output_on and (not self.input_ok or self.test_remaining is not None)

    @property
    def charging(self) -> bool:
        return self.input_ok and self.test_remaining is None and self.charge < 99.95

    def _runtime_load(self) -> float:
        # A floor so that an idle UPS reports a long but finite runtime.
        return max(self.load_w, 0.01 * self.cfg.realpower_nominal)

    @property
    def runtime(self) -> float:
        """Runtime in s as the UPS reports it: from the nameplate capacity, so an aged battery
        makes it optimistic."""
        nameplate_wh = self.charge / 100.0 * self.cfg.battery_wh
        return nameplate_wh * self.cfg.efficiency * 3600.0 / self._runtime_load()

    @property
    def real_runtime(self) -> float:
        """Runtime in s the battery will really give at the present load."""
        return self.energy_wh * self.cfg.efficiency * 3600.0 / self._runtime_load()

    @property
    def low_battery(self) -> bool:
        return self.on_battery and (
            self.charge < self.charge_low or self.runtime < self.runtime_low
        )

    @property
    def input_power_w(self) -> float:
        """What it draws from its input: the load (through the inverter) plus charging."""
        if not self.input_ok:
            return 0.0
        draw = self.load_w / self.cfg.efficiency if self.output_on and not self.on_battery else 0.0
        return draw + (self.recharge_w if self.charging else 0.0)

    def status_flags(self) -> list[str]:
        flags = ["OL" if self.input_ok else "OB"]
        if self.on_battery and self.load_w > 0:
            flags.append("DISCHRG")
        elif self.charging:
            flags.append("CHRG")
        if self.low_battery:
            flags.append("LB")
        if self.replace_battery:
            flags.append("RB")
        if not self.output_on:
            flags.append("OFF")
        if self.fsd:
            flags.insert(0, "FSD")
        return flags

    def step(self, dt: float) -> None:
        if self.shutdown_in is not None:
            self.shutdown_in -= dt
            if self.shutdown_in <= 0:
                self.shutdown_in = None
                self._turn_off(f"shutdown.{self.shutdown_kind}")
                self.return_pending = self.shutdown_kind == "return"
                self._restart_timer = 0.0
        if not self.output_on and self.return_pending:
            if self.input_ok:
                self._restart_timer += dt
                if self._restart_timer >= self.delay_start:
                    self._turn_on()
            else:
                self._restart_timer = 0.0
        if self.test_remaining is not None:
            self.test_remaining -= dt
            if self.test_remaining <= 0:
                self._finish_test()
        if self.on_battery:
            self.energy_wh -= self.load_w / self.cfg.efficiency * dt / 3600.0
            if self.energy_wh <= 0.0:
                self.energy_wh = 0.0
                self.test_remaining = None
                self._turn_off("battery exhausted")
                # Like most UPSes: back on by itself once the utility returns.
                self.return_pending = True
                self._restart_timer = 0.0
        elif self.charging:
            self.energy_wh = min(self.capacity_wh, self.energy_wh + self.recharge_w * dt / 3600.0)

    def _turn_off(self, reason: str) -> None:
        self.output_on = False
        self.off_reason = reason
        self.load_w = 0.0

    def _turn_on(self) -> None:
        self.output_on = True
        self.off_reason = ""
        self.return_pending = False
        self._restart_timer = 0.0
        # upsd's FSD latch is gone once the load has been power-cycled (the site restarted).
        self.fsd = False

    def _finish_test(self) -> None:
        self.test_remaining = None
        if self.health < 0.6:
            self.test_result = "Done and warning"
            self.replace_battery = True
        else:
            self.test_result = "Done and passed"
            self.replace_battery = False

    def run_command(self, cmd: str) -> None:
        if cmd not in UPS_COMMANDS:
            raise SiteError("CMD-NOT-SUPPORTED", f"{self.name}: no instant command {cmd!r}")
        if cmd == "beeper.disable":
            self.beeper = "disabled"
        elif cmd == "beeper.enable":
            self.beeper = "enabled"
        elif cmd == "beeper.mute":
            if self.beeper == "enabled":
                self.beeper = "muted"
        elif cmd == "load.off":
            self.shutdown_in = None
            self.return_pending = False
            self._turn_off("load.off")
        elif cmd == "load.on":
            if not self.input_ok and self.energy_wh <= 0:
                raise SiteError("INSTCMD-FAILED", f"{self.name}: no input and battery empty")
            self.shutdown_in = None
            self._turn_on()
        elif cmd in ("shutdown.return", "shutdown.stayoff"):
            self.shutdown_kind = "return" if cmd == "shutdown.return" else "stayoff"
            if self.shutdown_in is None:
                self.shutdown_in = self.delay_shutdown
        elif cmd == "shutdown.stop":
            self.shutdown_in = None
        elif cmd == "test.battery.start":
            if not self.input_ok:
                raise SiteError("INSTCMD-FAILED", f"{self.name}: no battery test on battery")
            self.test_remaining = BATTERY_TEST_S
            self.test_result = "In progress"
        elif cmd == "test.battery.stop" and self.test_remaining is not None:
            self.test_remaining = None
            self.test_result = "Aborted"

    def set_var(self, var: str, value: str) -> None:
        spec = UPS_RW_VARS.get(var)
        if spec is None:
            if var in self.nut_vars():
                raise SiteError("READONLY", f"{self.name}: {var} is read-only")
            raise SiteError("VAR-NOT-SUPPORTED", f"{self.name}: no variable {var!r}")
        kind, low, high = spec
        if kind.startswith("STRING"):
            limit = int(kind.split(":")[1])
            if len(value) > limit:
                raise SiteError("TOO-LONG", f"{var}: at most {limit} characters")
            self.ups_id = value
            return
        try:
            number = float(value)
        except ValueError:
            raise SiteError("INVALID-VALUE", f"{var}: {value!r} is not a number") from None
        if not (low <= number <= high) or math.isnan(number):
            raise SiteError("INVALID-VALUE", f"{var}: {value} is outside {low:g}..{high:g}")
        if var == "battery.charge.low":
            self.charge_low = number
        elif var == "battery.runtime.low":
            self.runtime_low = number
        elif var == "ups.delay.shutdown":
            self.delay_shutdown = number
        elif var == "ups.delay.start":
            self.delay_start = number

    def nut_vars(self) -> dict[str, str]:
        """NUT's variables for this UPS (names and units as NUT's drivers publish them)."""
        c = self.cfg
        charge = self.charge
        nominal_v = c.battery_voltage_nominal
        battery_v = nominal_v * (0.875 + 0.25 * charge / 100.0) + (
            0.02 * nominal_v if self.charging else 0.0
        )
        out_v = (self.input_voltage if not self.on_battery else 230.0) if self.output_on else 0.0
        load_pct = 100.0 * self.load_w / c.realpower_nominal
        return {
            "battery.charge": _int(charge),
            "battery.charge.low": _int(self.charge_low),
            "battery.runtime": _int(self.runtime),
            "battery.runtime.low": _int(self.runtime_low),
            "battery.type": "PbAcid",
            "battery.voltage": f"{battery_v:.1f}",
            "battery.voltage.nominal": f"{nominal_v:.1f}",
            "device.mfr": c.mfr,
            "device.model": c.model,
            "device.serial": c.serial,
            "device.type": "ups",
            "driver.name": "facility-sim",
            "driver.version": "1.0",
            "input.frequency": f"{self.input_frequency:.1f}",
            "input.voltage": f"{self.input_voltage:.1f}",
            "input.voltage.nominal": "230",
            "output.frequency": f"{50.0 if self.output_on else 0.0:.1f}",
            "output.voltage": f"{out_v:.1f}",
            "ups.beeper.status": self.beeper,
            "ups.delay.shutdown": _int(self.delay_shutdown),
            "ups.delay.start": _int(self.delay_start),
            "ups.id": self.ups_id,
            "ups.load": _int(load_pct),
            "ups.mfr": c.mfr,
            "ups.model": c.model,
            "ups.realpower": _int(self.load_w),
            "ups.realpower.nominal": _int(c.realpower_nominal),
            "ups.serial": c.serial,
            "ups.status": " ".join(self.status_flags()),
            "ups.temperature": f"{25.0 + 8.0 * min(load_pct, 100.0) / 100.0:.1f}",
            "ups.test.result": self.test_result,
            "ups.timer.shutdown": _int(self.shutdown_in) if self.shutdown_in is not None else "-1",
        }


def _int(x: float) -> str:
    return str(round(x))


ServerState = Literal["off", "booting", "running", "shutting_down"]


@dataclass
class Server(_Equipment):
    cfg: ServerConfig
    state: ServerState = "running"
    psu_failed: list[bool] = field(default_factory=list)
    psu_live: list[bool] = field(default_factory=list)
    load_w: float = 0.0
    #: Why it went off last: "" (never), "os shutdown", "power lost", "power off".
    off_reason: str = ""
    boots: int = 0
    _timer: float = 0.0
    _had_power: bool = True

    @property
    def powered(self) -> bool:
        """Chassis power is on (IPMI's "power on")."""
        return self.state != "off"

    @property
    def power_w(self) -> float:
        return self.load_w if self.powered else 0.0

    def psu_watts(self, index: int) -> float:
        live = sum(self.psu_live)
        if not self.powered or not live or not self.psu_live[index]:
            return 0.0
        return self.power_w / live

    def step(self, dt: float, feeds_live: list[bool]) -> None:
        self.psu_live = [
            ok and not bad for ok, bad in zip(feeds_live, self.psu_failed, strict=True)
        ]
        has_power = any(self.psu_live)
        if not has_power:
            if self.state != "off":
                self.state, self.off_reason = "off", "power lost"
            self._had_power = False
            return
        if not self._had_power:
            self._had_power = True
            if self.state == "off" and self.cfg.restore_on_power:
                self._boot()
        self._timer += dt
        if self.state == "shutting_down" and self._timer >= self.cfg.os_shutdown_s:
            self.state, self.off_reason = "off", "os shutdown"
        elif self.state == "booting" and self._timer >= self.cfg.boot_s:
            self.state, self._timer = "running", 0.0

    def _boot(self) -> None:
        self.state, self._timer = "booting", 0.0
        self.boots += 1

    def shutdown(self) -> None:
        """A graceful OS shutdown (ACPI soft-off, or a shutdown hook): off after os_shutdown_s."""
        if self.state in ("running", "booting"):
            self.state, self._timer = "shutting_down", 0.0

    def power_on(self) -> None:
        if self.state == "off" and any(self.psu_live):
            self._boot()

    def power_off(self) -> None:
        """Hard power off (IPMI chassis power off)."""
        if self.state != "off":
            self.state, self.off_reason = "off", "power off"


@dataclass
class Pdu(_Equipment):
    cfg: PduConfig
    live: bool = True
    voltage: float = 0.0
    #: Scenario fault: the PDU's input breaker is open.
    breaker_open: bool = False
    #: outlet number -> (server, PSU index)
    outlets: dict[int, tuple[Server, int]] = field(default_factory=dict)

    def outlet_watts(self, outlet: int) -> float:
        server, psu = self.outlets[outlet]
        return server.psu_watts(psu) if self.live else 0.0

    def outlet_current(self, outlet: int) -> float:
        return self.outlet_watts(outlet) / self.voltage if self.voltage else 0.0

    @property
    def load_w(self) -> float:
        return sum(self.outlet_watts(n) for n in self.outlets)

    @property
    def current(self) -> float:
        return self.load_w / self.voltage if self.voltage else 0.0


@dataclass
class Uplink(_Equipment):
    cfg: UplinkConfig
    up: bool = True
    latency_ms: float = 5.0


# --------------------------------------------------------------------------------------------
# The site
# --------------------------------------------------------------------------------------------

#: Longest model step: timers (transfer delays, crank attempts) resolve within this.
MAX_STEP_S = 0.5


class SimulatedSite:
    """Every piece of equipment and the power paths between them."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self.name = config.name
        self.time = 0.0
        self.utility = Utility(config.utility)
        self.generator: Generator | None = None
        if config.generator:
            g = config.generator
            fuel = g.tank_litres if g.fuel_litres is None else min(g.fuel_litres, g.tank_litres)
            self.generator = Generator(g, fuel_litres=fuel)
        self.ats = Ats(config.ats) if config.ats else None
        self.ups: dict[str, Ups] = {u.name: Ups(u) for u in config.ups}
        self.pdus: dict[str, Pdu] = {p.name: Pdu(p) for p in config.pdus}
        self.servers: dict[str, Server] = {}
        for s in config.servers:
            server = Server(
                s,
                state="running" if s.power == "on" else "off",
                psu_failed=[False] * len(s.psus),
                psu_live=[True] * len(s.psus),
                load_w=s.load_w,
            )
            self.servers[s.name] = server
            for i, psu in enumerate(s.psus):
                self.pdus[psu.feed].outlets[psu.outlet] = (server, i)
        self.uplinks: dict[str, Uplink] = {
            n.name: Uplink(n, up=n.up, latency_ms=n.latency_ms) for n in config.uplinks
        }
        # Settle the power paths so that the very first read is consistent.
        self.step(0.0)

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_config(cls, data: dict[str, Any], source: str = "site") -> SimulatedSite:
        try:
            return cls(SiteConfig.model_validate(data))
        except ValidationError as e:
            raise SiteConfigError(_validation_message(source, e)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> SimulatedSite:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise SiteConfigError(f"{p}: cannot read: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise SiteConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise SiteConfigError(f"{p}: expected a mapping at the top level")
        return cls.from_config(data, str(p))

    @classmethod
    def default(cls) -> SimulatedSite:
        """The bundled site (config/sim-site.yaml)."""
        text = resources.files("facility_agent.data").joinpath("sim-site.yaml").read_text("utf-8")
        return cls.from_config(yaml.safe_load(text), "sim-site.yaml")

    # ---- time ---------------------------------------------------------------------------

    def advance_to(self, t: float) -> None:
        """Step the model up to simulated time `t` (no-op if already there)."""
        if t > self.time:
            self.step(t - self.time)

    def step(self, dt: float) -> None:
        """Move the model forward by `dt` simulated seconds, in slices of at most MAX_STEP_S."""
        if dt < 0:
            raise ValueError("time does not run backwards")
        slices = max(1, math.ceil(dt / MAX_STEP_S))
        for _ in range(slices):
            self._step(dt / slices)
        self.time += dt

    def _step(self, dt: float) -> None:
        gen, ats = self.generator, self.ats
        # The switch sees the generator as it was at the start of this slice, so a transfer
        # delay counts from the moment the generator was ready.
        if ats:
            ats.step(dt, self.utility.up, gen.available if gen else False)
        if gen:
            gen.demand = not self.utility.up or (ats is not None and ats.source == "generator")
            gen.step(dt)
        for ups in self.ups.values():
            ok, volts, hz = self.source(ups.cfg.input)
            ups.input_ok, ups.input_voltage, ups.input_frequency = ok, volts, hz
        for pdu in self.pdus.values():
            ok, volts, _ = self.source(pdu.cfg.feed)
            pdu.live = ok and not pdu.breaker_open
            pdu.voltage = volts if pdu.live else 0.0
        for server in self.servers.values():
            live = [self.pdus[p.feed].live for p in server.cfg.psus]
            server.step(dt, live)
        for ups in self.ups.values():
            ups.load_w = (
                sum(p.load_w for p in self.pdus.values() if p.cfg.feed == ups.name)
                if ups.output_on
                else 0.0
            )
            ups.step(dt)
        if gen and ats:
            gen.load_w = self._load_on(ats.name) if ats.source == "generator" and ats.live else 0.0

    def _load_on(self, source: str) -> float:
        ups_w = sum(u.input_power_w for u in self.ups.values() if u.cfg.input == source)
        return ups_w + sum(p.load_w for p in self.pdus.values() if p.cfg.feed == source)

    def source(self, name: str) -> tuple[bool, float, float]:
        """Whether the named source (utility, ATS, UPS) has power, and its volts and hertz."""
        if name == "utility":
            return self.utility.up, self.utility.voltage, self.utility.frequency
        if self.ats and name == self.ats.name:
            if not self.ats.live:
                return False, 0.0, 0.0
            if self.ats.source == "utility":
                return True, self.utility.voltage, self.utility.frequency
            assert self.generator is not None
            return True, self.generator.voltage, self.generator.frequency
        ups = self.ups[name]
        return ups.output_on, (230.0 if ups.output_on else 0.0), (50.0 if ups.output_on else 0.0)

    # ---- lookups ------------------------------------------------------------------------

    def get_ups(self, name: str) -> Ups:
        return _named(self.ups, name, "UPS", "UNKNOWN-UPS")

    def get_server(self, name: str) -> Server:
        return _named(self.servers, name, "server")

    def get_pdu(self, name: str) -> Pdu:
        return _named(self.pdus, name, "PDU")

    def get_uplink(self, name: str) -> Uplink:
        return _named(self.uplinks, name, "uplink")

    def get_generator(self) -> Generator:
        if self.generator is None:
            raise SiteError("UNKNOWN-DEVICE", "this site has no generator")
        return self.generator

    # ---- the NUT view of a UPS ----------------------------------------------------------

    def ups_names(self) -> list[str]:
        return list(self.ups)

    def ups_description(self, name: str) -> str:
        ups = self.get_ups(name)
        return ups.cfg.description or f"{ups.cfg.mfr} {ups.cfg.model}"

    def nut_vars(self, ups_name: str) -> dict[str, str]:
        return self.get_ups(ups_name).nut_vars()

    def nut_rw_vars(self, ups_name: str) -> dict[str, str]:
        """Writable variables and their NUT type (`NUMBER`, `STRING:n`)."""
        self.get_ups(ups_name)
        return {name: spec[0] for name, spec in UPS_RW_VARS.items()}

    def nut_commands(self, ups_name: str) -> dict[str, str]:
        """Instant commands and their descriptions."""
        self.get_ups(ups_name)
        return dict(UPS_COMMANDS)

    def run_nut_command(self, ups_name: str, cmd: str) -> None:
        self.get_ups(ups_name).run_command(cmd)

    def set_nut_var(self, ups_name: str, var: str, value: str) -> None:
        self.get_ups(ups_name).set_var(var, value)

    def set_fsd(self, ups_name: str) -> None:
        """Raise the forced-shutdown flag (NUT's FSD; cleared when the output power-cycles)."""
        self.get_ups(ups_name).fsd = True

    # ---- a summary for people (the demo's live view, logs) ------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A plain-data picture of the whole site, for displays and debugging."""
        gen = self.generator
        return {
            "time": round(self.time, 3),
            "utility": {"up": self.utility.up, "voltage": self.utility.voltage},
            "generator": None
            if gen is None
            else {
                "state": gen.state,
                "fuel_litres": round(gen.fuel_litres, 2),
                "load_w": round(gen.load_w, 1),
                "attempt": gen.attempt,
                "fault": gen.fault_reason,
            },
            "ats": None
            if self.ats is None
            else {
                "source": self.ats.source,
                "live": self.ats.live,
                "transfers": self.ats.transfers,
            },
            "ups": {
                n: {
                    "status": " ".join(u.status_flags()),
                    "charge": round(u.charge, 1),
                    "runtime": round(u.runtime),
                    "real_runtime": round(u.real_runtime),
                    "load_w": round(u.load_w, 1),
                    "comm_dead": u.comm_dead,
                }
                for n, u in self.ups.items()
            },
            "pdus": {
                n: {"live": p.live, "load_w": round(p.load_w, 1)} for n, p in self.pdus.items()
            },
            "servers": {
                n: {"state": s.state, "psu_live": list(s.psu_live)} for n, s in self.servers.items()
            },
            "uplinks": {n: u.up for n, u in self.uplinks.items()},
        }

    def equipment_names(self) -> Iterator[str]:
        """Names of every piece of equipment."""
        yield "utility"
        if self.generator:
            yield self.generator.name
        if self.ats:
            yield self.ats.name
        yield from self.ups
        yield from self.pdus
        yield from self.servers
        yield from self.uplinks
