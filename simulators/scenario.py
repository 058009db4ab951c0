"""Scenarios: timelines of faults injected into the simulated site.

A scenario is data (YAML in `config/scenarios/`, format in its README): at simulated second `at`,
`do` an action to a `target` with an optional `value`. The runner steps the model exactly to each
step's time before applying it, so timings hold at any clock speed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from facility_agent.simulators.clock import Clock
from facility_agent.simulators.site import ALWAYS, UPS_COMMANDS, SimulatedSite, SiteError

# --------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------

TargetKind = Literal["none", "ups", "pdu", "server", "uplink"]
ValueKind = Literal["none", "number", "count", "psu", "string", "command"]

ActionFn = Callable[[SimulatedSite, str, Any], None]


@dataclass(frozen=True)
class ActionSpec:
    target: TargetKind
    #: What `value` holds; "count" and "string" may be omitted.
    value: ValueKind
    help: str
    fn: ActionFn


class ScenarioError(ValueError):
    """A scenario file or an injected action is invalid; the message says what and where."""


def _gen(site: SimulatedSite) -> Any:
    try:
        return site.get_generator()
    except SiteError as e:
        raise ScenarioError(str(e)) from None


def _utility(up: bool) -> ActionFn:
    def fn(site: SimulatedSite, _t: str, _v: Any) -> None:
        site.utility.up = up

    return fn


def _crank_fail(site: SimulatedSite, _t: str, v: Any) -> None:
    _gen(site).fail_cranks = ALWAYS if v is None else int(v)


def _crank_ok(site: SimulatedSite, _t: str, _v: Any) -> None:
    _gen(site).fail_cranks = 0


def _gen_fault(site: SimulatedSite, _t: str, v: Any) -> None:
    _gen(site).trip(str(v) if v is not None else "injected fault")


def _gen_reset(site: SimulatedSite, _t: str, _v: Any) -> None:
    _gen(site).reset()


def _gen_fuel(site: SimulatedSite, _t: str, v: Any) -> None:
    g = _gen(site)
    g.fuel_litres = max(0.0, min(float(v), g.cfg.tank_litres))


def _gen_manual(mode: bool | None) -> ActionFn:
    def fn(site: SimulatedSite, _t: str, _v: Any) -> None:
        _gen(site).manual = mode

    return fn


def _ups_flag(flag: str, on: bool) -> ActionFn:
    def fn(site: SimulatedSite, t: str, _v: Any) -> None:
        setattr(site.get_ups(t), flag, on)

    return fn


def _ups_health(site: SimulatedSite, t: str, v: Any) -> None:
    ups = site.get_ups(t)
    charge = ups.charge
    ups.health = float(v)
    ups.energy_wh = ups.capacity_wh * charge / 100.0


def _ups_charge(site: SimulatedSite, t: str, v: Any) -> None:
    ups = site.get_ups(t)
    ups.energy_wh = ups.capacity_wh * float(v) / 100.0


def _ups_command(site: SimulatedSite, t: str, v: Any) -> None:
    site.run_nut_command(t, str(v))


def _ups_fsd(site: SimulatedSite, t: str, _v: Any) -> None:
    site.set_fsd(t)


def _pdu_breaker(open_: bool) -> ActionFn:
    def fn(site: SimulatedSite, t: str, _v: Any) -> None:
        site.get_pdu(t).breaker_open = open_

    return fn


def _psu(failed: bool) -> ActionFn:
    def fn(site: SimulatedSite, t: str, v: Any) -> None:
        server = site.get_server(t)
        index = int(v) - 1
        if not 0 <= index < len(server.psu_failed):
            raise ScenarioError(f"{t} has PSUs 1..{len(server.psu_failed)}, not {v}")
        server.psu_failed[index] = failed

    return fn


def _server(method: str) -> ActionFn:
    def fn(site: SimulatedSite, t: str, _v: Any) -> None:
        getattr(site.get_server(t), method)()

    return fn


def _server_load(site: SimulatedSite, t: str, v: Any) -> None:
    site.get_server(t).load_w = float(v)


def _uplink(up: bool) -> ActionFn:
    def fn(site: SimulatedSite, t: str, _v: Any) -> None:
        site.get_uplink(t).up = up

    return fn


def _uplink_latency(site: SimulatedSite, t: str, v: Any) -> None:
    site.get_uplink(t).latency_ms = float(v)


#: Every action a scenario step (or `RunningSimulator.inject`) can do. Keep the README in step.
ACTIONS: dict[str, ActionSpec] = {
    "utility.fail": ActionSpec("none", "none", "the utility feed is lost", _utility(False)),
    "utility.restore": ActionSpec("none", "none", "the utility feed returns", _utility(True)),
    "generator.crank_fail": ActionSpec(
        "none", "count", "the next `value` crank attempts fail (all if omitted)", _crank_fail
    ),
    "generator.crank_ok": ActionSpec("none", "none", "crank attempts succeed again", _crank_ok),
    "generator.fault": ActionSpec(
        "none", "string", "the generator trips (value: the reason)", _gen_fault
    ),
    "generator.reset": ActionSpec("none", "none", "clear a generator fault", _gen_reset),
    "generator.fuel": ActionSpec("none", "number", "set the fuel level in litres", _gen_fuel),
    "generator.start": ActionSpec(
        "none", "none", "manual run (ignores utility)", _gen_manual(True)
    ),
    "generator.stop": ActionSpec("none", "none", "manual stop (stays off)", _gen_manual(False)),
    "generator.auto": ActionSpec("none", "none", "back to automatic mode", _gen_manual(None)),
    "ups.comm_dead": ActionSpec(
        "ups",
        "none",
        "its interface stops answering (NUT: DATA-STALE)",
        _ups_flag("comm_dead", True),
    ),
    "ups.comm_restore": ActionSpec(
        "ups", "none", "its interface answers again", _ups_flag("comm_dead", False)
    ),
    "ups.driver_down": ActionSpec(
        "ups", "none", "NUT: DRIVER-NOT-CONNECTED", _ups_flag("driver_down", True)
    ),
    "ups.driver_up": ActionSpec(
        "ups", "none", "the driver is back", _ups_flag("driver_down", False)
    ),
    "ups.battery_health": ActionSpec(
        "ups", "number", "real capacity as a fraction of the nameplate (aged: < 1)", _ups_health
    ),
    "ups.battery_charge": ActionSpec("ups", "number", "set the state of charge (%)", _ups_charge),
    "ups.command": ActionSpec("ups", "command", "run a NUT instant command", _ups_command),
    "ups.fsd": ActionSpec("ups", "none", "raise the forced-shutdown flag", _ups_fsd),
    "pdu.feed_fail": ActionSpec("pdu", "none", "the PDU's input breaker opens", _pdu_breaker(True)),
    "pdu.feed_restore": ActionSpec(
        "pdu", "none", "the breaker is closed again", _pdu_breaker(False)
    ),
    "server.psu_fail": ActionSpec("server", "psu", "PSU `value` (1, 2 ...) fails", _psu(True)),
    "server.psu_restore": ActionSpec("server", "psu", "PSU `value` is replaced", _psu(False)),
    "server.shutdown": ActionSpec("server", "none", "graceful OS shutdown", _server("shutdown")),
    "server.power_on": ActionSpec("server", "none", "chassis power on", _server("power_on")),
    "server.power_off": ActionSpec("server", "none", "hard power off", _server("power_off")),
    "server.load": ActionSpec("server", "number", "set its power draw in W", _server_load),
    "uplink.down": ActionSpec("uplink", "none", "the uplink goes down", _uplink(False)),
    "uplink.up": ActionSpec("uplink", "none", "the uplink comes back", _uplink(True)),
    "uplink.latency": ActionSpec("uplink", "number", "set its latency in ms", _uplink_latency),
}


def _check_value(action: str, spec: ActionSpec, value: Any) -> Any:
    """The value converted to what the action needs, or a ScenarioError saying why not."""
    kind = spec.value
    if kind == "none":
        if value is not None:
            raise ScenarioError(f"{action} takes no value")
        return None
    if value is None:
        if kind in ("count", "string"):
            return None
        raise ScenarioError(f"{action} needs a value ({kind})")
    if kind in ("number", "count", "psu"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"{action}: value must be a number, not {value!r}")
        least = 0 if kind == "count" else 1
        if kind in ("count", "psu") and (value != int(value) or value < least):
            raise ScenarioError(f"{action}: value must be a whole number >= {least}, not {value!r}")
        return value
    if kind == "command" and value not in UPS_COMMANDS:
        known = ", ".join(sorted(UPS_COMMANDS))
        raise ScenarioError(f"{action}: unknown command {value!r}; known: {known}")
    return str(value)


def check_action(action: str, target: str | None, value: Any) -> Any:
    """Validate an action's shape (not whether the target exists); returns the value to use."""
    spec = ACTIONS.get(action)
    if spec is None:
        raise ScenarioError(f"unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}")
    if spec.target == "none" and target is not None:
        raise ScenarioError(f"{action} takes no target")
    if spec.target != "none" and not target:
        raise ScenarioError(f"{action} needs a target ({spec.target} name)")
    return _check_value(action, spec, value)


def _target_exists(site: SimulatedSite, kind: TargetKind, target: str) -> bool:
    pools: dict[str, Any] = {
        "ups": site.ups,
        "pdu": site.pdus,
        "server": site.servers,
        "uplink": site.uplinks,
    }
    return kind == "none" or target in pools[kind]


def apply_action(
    site: SimulatedSite, action: str, target: str | None = None, value: Any = None
) -> None:
    """Do one action to the site now."""
    checked = check_action(action, target, value)
    spec = ACTIONS[action]
    if target is not None and not _target_exists(site, spec.target, target):
        raise ScenarioError(f"{action}: no {spec.target} named {target!r} in this site")
    try:
        spec.fn(site, target or "", checked)
    except SiteError as e:
        raise ScenarioError(f"{action}: {e}") from None
    # Let the consequences flow through the power paths without advancing time, so that
    # whoever looks next (a face, a test) sees them at once.
    site.step(0.0)


# --------------------------------------------------------------------------------------------
# Scenario files
# --------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*)+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(value: Any) -> float:
    """`10`, `10s`, `500ms`, `2m`, `1m30s` -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a time, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.match(value):
        seconds = sum(float(n) * _UNIT[u] for n, u in _PART.findall(value))
    else:
        raise ValueError(f"{value!r} is not a time (examples: 10, 10s, 500ms, 2m, 1m30s)")
    if seconds < 0:
        raise ValueError("a time cannot be negative")
    return seconds


#: A time in a scenario file (`10`, `500ms`, `1m30s`: parse_seconds), held as seconds.
Seconds = Annotated[float, BeforeValidator(parse_seconds)]


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: Seconds
    do: str
    target: str | None = None
    value: float | int | str | None = None
    #: Free text shown when the step fires: why this step is in the scenario.
    note: str = ""

    @model_validator(mode="after")
    def _action(self) -> Step:
        try:
            check_action(self.do, self.target, self.value)
        except ScenarioError as e:
            raise ValueError(str(e)) from None
        return self


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    #: Simulated seconds the scenario lasts; runners may stop at its end.
    duration: Seconds
    #: The clock speed the scenario is meant to be watched at (a hint for the demo).
    speed: float | None = Field(default=None, gt=0)
    steps: list[Step] = []

    @model_validator(mode="after")
    def _timeline(self) -> Scenario:
        late = [f"{s.do} at {s.at:g}s" for s in self.steps if s.at > self.duration]
        if late:
            raise ValueError(f"steps after the end ({self.duration:g}s): {', '.join(late)}")
        # Stable sort: steps at the same time keep their file order.
        object.__setattr__(self, "steps", sorted(self.steps, key=lambda s: s.at))
        return self

    def check_against(self, site: SimulatedSite) -> None:
        """Raise ScenarioError if a step names equipment the site does not have."""
        problems = []
        for i, step in enumerate(self.steps):
            spec = ACTIONS[step.do]
            if step.target is not None and not _target_exists(site, spec.target, step.target):
                problems.append(f"steps.{i}: {step.do}: no {spec.target} named {step.target!r}")
            if step.do.startswith("generator.") and site.generator is None:
                problems.append(f"steps.{i}: {step.do}: this site has no generator")
        if problems:
            raise ScenarioError(
                f"scenario {self.name!r} does not fit the site:\n  " + "\n  ".join(problems)
            )


def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped in config/scenarios."""
    folder = resources.files("facility_agent.data").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping at the top level")
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        lines = [f"{source}: invalid scenario"]
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {loc}: {msg}")
        raise ScenarioError("\n".join(lines)) from None


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A bundled scenario by name (`utility-outage`) or a scenario file by path."""
    text = str(name_or_path)
    path = Path(text)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        try:
            body = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ScenarioError(f"{path}: cannot read: {e.strerror}") from None
        source = str(path)
    else:
        names = bundled_scenarios()
        if text not in names:
            raise ScenarioError(f"no bundled scenario {text!r}; bundled: {', '.join(names)}")
        folder = resources.files("facility_agent.data").joinpath("scenarios")
        body = folder.joinpath(f"{text}.yaml").read_text(encoding="utf-8")
        source = f"{text}.yaml"
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as e:
        raise ScenarioError(f"{source}: not valid YAML: {e}") from None
    return parse_scenario(data, source)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppliedStep:
    """A step that fired, when (site time), and the error if it could not be applied."""

    step: Step
    time: float
    error: str | None = None


class ScenarioRunner:
    """Moves the site along the clock and fires the scenario's steps at their exact times.

    Scenario time 0 is the site's time when the runner is created.
    """

    def __init__(
        self,
        site: SimulatedSite,
        scenario: Scenario,
        clock: Clock,
        *,
        on_step: Callable[[AppliedStep], None] | None = None,
    ) -> None:
        scenario.check_against(site)
        self.site = site
        self.scenario = scenario
        self.clock = clock
        self.on_step = on_step
        self.start = site.time
        self.applied: list[AppliedStep] = []
        self._next = 0

    @property
    def pending(self) -> list[Step]:
        return self.scenario.steps[self._next :]

    @property
    def elapsed(self) -> float:
        return self.site.time - self.start

    @property
    def finished(self) -> bool:
        return self._next >= len(self.scenario.steps) and self.elapsed >= self.scenario.duration

    def advance(self, until: float | None = None) -> list[AppliedStep]:
        """Step the site to `until` (default: the clock's now), firing due steps on the way."""
        target = self.clock.now() if until is None else until
        fired: list[AppliedStep] = []
        steps = self.scenario.steps
        while self._next < len(steps) and self.start + steps[self._next].at <= target:
            step = steps[self._next]
            self._next += 1
            self.site.advance_to(self.start + step.at)
            error = None
            try:
                apply_action(self.site, step.do, step.target, step.value)
            except ScenarioError as e:
                error = str(e)
            record = AppliedStep(step, self.site.time, error)
            self.applied.append(record)
            fired.append(record)
            if self.on_step:
                self.on_step(record)
        self.site.advance_to(target)
        return fired

    async def run(self, tick: float = 0.1, *, until_end: bool = True) -> None:
        """Advance every `tick` real seconds; returns at the scenario's end if `until_end`."""
        while not (until_end and self.finished):
            self.advance()
            await asyncio.sleep(tick)
