"""`facility-agent drill`: play a scenario against the simulated site with the site's real plan.

The site file's devices are pointed at the simulator's faces (same ids as the simulated
equipment), the real policy engine decides and acts (hooks may be dry-run), and the report
measures what matters on the day: time to detect, time to decide, each step, the plan's total
against the battery runtime left, and the time to recover. Drill runs go to their own journal
(`drill-journal.sqlite`), from which the plan's expected duration is learned until real runs
exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facility_agent.config.site import SiteConfig
from facility_agent.core.driver import DeviceConfig
from facility_agent.core.model import Event
from facility_agent.core.sink import Sink
from facility_agent.drivers.nut.face.server import NutFace
from facility_agent.runtime.agent import Agent

log = logging.getLogger(__name__)

#: How long after the scenario's end a drill waits for a plan or recovery still running.
SETTLE_MAX = 120.0


@dataclass
class Mark:
    """A scenario step as it fired: what, when (monotonic), at which simulated second."""

    what: str
    at: float
    sim_time: float | None = None
    target: str | None = None
    note: str | None = None


@dataclass
class DrillReport:
    scenario: str
    speed: float
    marks: list[Mark] = field(default_factory=list)
    events: list[tuple[float, Event]] = field(default_factory=list)
    skipped_devices: list[str] = field(default_factory=list)
    runtime_at_decision: float | None = None
    dry_run: bool = False
    started: float = field(default_factory=time.monotonic)
    #: Where the drill's NUT face listened, and when each secondary was first served FSD.
    nut_face: str | None = None
    secondaries: dict[str, float] = field(default_factory=dict)
    #: Each target's learned time after the drill (policy/durations.py), and the plan's
    #: expected duration at the decision and from what is learned now.
    learned: dict[str, float] = field(default_factory=dict)
    expected_after: float | None = None

    def first(self, kind: str, after: float = 0.0) -> tuple[float, Event] | None:
        for at, ev in self.events:
            if ev.type == kind and at >= after:
                return at, ev
        return None

    def mark(self, what: str) -> Mark | None:
        return next((m for m in self.marks if m.what == what), None)

    def lines(self) -> list[str]:
        dry = " (DRY RUN: no command or hook was run)" if self.dry_run else ""
        out = [f"drill report: scenario {self.scenario} at x{self.speed:g}{dry}"]
        if self.skipped_devices:
            left = ", ".join(self.skipped_devices)
            out.append(f"  devices with no simulated counterpart (left out): {left}")
        lost = self.mark("utility.fail")
        detect = self.first("power.on_battery", lost.at if lost else 0.0)
        decide = self.first("shutdown.started")
        if lost and detect:
            took = detect[0] - lost.at
            out.append(
                f"  time to detect:  {took:6.2f} s (utility lost -> the agent's power.on_battery)"
            )
        if detect and decide:
            why = decide[1].data.get("reason", "")
            out.append(f"  time to decide:  {decide[0] - detect[0]:6.2f} s ({why})")
        elif not decide:
            out.append("  no shutdown was started")
        real = None
        if self.runtime_at_decision is not None:
            real = self.runtime_at_decision / max(self.speed, 1e-9)
        steps = [(at, ev) for at, ev in self.events if ev.type == "shutdown.step"]
        if steps and decide:
            expected = decide[1].data.get("expected_duration")
            against = f" against {real:.0f} s of battery runtime" if real is not None else ""
            guess = f" (expected {float(expected):.1f} s)" if expected is not None else ""
            out.append(f"  steps: took, ended after the decision{against}{guess}")
        for at, ev in steps:
            ok = "ok    " if ev.data.get("ok") else "FAILED"
            took = float(ev.data.get("duration", 0.0))
            when = ""
            if decide:
                after = at - decide[0]
                when = f"  +{after:6.2f} s"
                if real is not None:
                    used = 100 * after / max(real, 1e-9)
                    when += f" ({real - after:.0f} s left, {used:.1f}% used)"
            out.append(f"    step {ok} {took:6.2f} s{when}  {ev.message}")
        out += self._secondary_lines(decide[0] if decide else None, real)
        done = (
            self.first("shutdown.completed")
            or self.first("shutdown.cancelled")
            or self.first("shutdown.failed")
        )
        if decide and done:
            total = done[0] - decide[0]
            out.append(f"  plan {done[1].type.split('.')[1]} after {total:6.2f} s")
            if self.runtime_at_decision is not None:
                real = self.runtime_at_decision / max(self.speed, 1e-9)
                line = (
                    f"  battery runtime at decision: {self.runtime_at_decision:.0f} s simulated "
                    f"({real:.0f} s at this speed)"
                )
                if done[1].type == "shutdown.completed":
                    line += f"; margin {real - total:+.0f} s"
                out.append(line)
        out += self._learned_lines()
        back = self.mark("utility.restore")
        recovered = self.first("recovery.completed")
        if back and recovered:
            rto = recovered[0] - back.at
            out.append(f"  time to recover (RTO): {rto:6.2f} s (power back -> recovery completed)")
        elif self.first("recovery.failed"):
            out.append("  recovery FAILED")
        elif back:
            out.append("  no recovery ran")
        return out

    def _secondary_lines(self, decided: float | None, real: float | None) -> list[str]:
        if self.nut_face is None:
            return []
        if not self.secondaries:
            return [f"  NUT face {self.nut_face}: no secondary was served FSD"]
        out = []
        for who, at in sorted(self.secondaries.items(), key=lambda item: item[1]):
            line = f"  NUT secondary {who} saw FSD"
            if decided is not None:
                after = at - decided
                line += f" at +{after:.2f} s"
                if real is not None:
                    line += f" ({real - after:.0f} s of battery runtime left)"
            out.append(line)
        return out

    def _learned_lines(self) -> list[str]:
        if not self.learned:
            return []
        out = ["  learned target times (median of the last runs):"]
        width = min(max(len(k) for k in self.learned), 70)
        out += [f"    {k:<{width}}  {v:7.2f} s" for k, v in sorted(self.learned.items())]
        decide = self.first("shutdown.started")
        before = decide[1].data.get("expected_duration") if decide else None
        if self.expected_after is not None:
            was = f"{float(before):.1f} s at the decision, " if before is not None else ""
            out.append(f"  expected plan duration: {was}{self.expected_after:.1f} s from now on")
        return out


def point_at_simulator(
    site: SiteConfig, info: Any, nut_listen: str | None = None
) -> tuple[SiteConfig, list[str]]:
    """The site with each device aimed at its simulated counterpart; the ones left out.

    The NUT face listens on `nut_listen` if given (a test secondary's address), else on a
    free loopback port."""
    devices: list[DeviceConfig] = []
    skipped: list[str] = []
    ports: dict[str, int] = dict(info.ports)
    for dev in site.devices:
        mapped = _map_device(dev, ports, info)
        if mapped is None:
            skipped.append(dev.id)
        else:
            devices.append(mapped)
    update: dict[str, Any] = {"devices": devices}
    face = site.sections.get("nut_server")
    if face is not None:
        # A drill's FSD must never reach the site's real secondaries: a free loopback port.
        listen = nut_listen or "127.0.0.1:0"
        sections = {**site.sections, "nut_server": face.model_copy(update={"listen": listen})}
        update["sections"] = sections
    return site.model_copy(update=update), skipped


def _map_device(dev: DeviceConfig, ports: dict[str, int], info: Any) -> DeviceConfig | None:
    update: dict[str, Any] = {}
    if dev.driver == "nut" and "nut" in ports and getattr(dev, "ups", None) in info.ups:
        update = {"host": "127.0.0.1", "port": ports["nut"]}
    elif dev.driver == "snmp" and "snmp" in ports and str(getattr(dev, "version", "2c")) != "3":
        # The SNMP face serves every simulated agent on one port, chosen by community.
        update = {"host": "127.0.0.1", "port": ports["snmp"], "community": dev.id}
    elif dev.driver == "modbus" and "modbus" in ports:
        update = {"host": "127.0.0.1", "port": ports["modbus"], "serial": None}
    elif dev.driver == "ipmi" and f"ipmi:{dev.id}" in ports:
        update = {"host": "127.0.0.1", "port": ports[f"ipmi:{dev.id}"]}
    elif dev.driver == "net":
        return dev
    if not update:
        return None
    fields = type(dev).model_fields
    return type(dev).model_validate(
        {**dev.model_dump(), **{k: v for k, v in update.items() if k in fields}}
    )


async def run_drill(
    site: SiteConfig,
    scenario: str,
    *,
    speed: float | None = None,
    dry_run: bool = False,
    sinks: list[Sink] | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_tick: Callable[[DrillReport, Any], None] | None = None,
    nut_port: int = 0,
    nut_face: str | None = None,
) -> DrillReport:
    from facility_agent.simulators.serve import RunningSimulator, SimulatorOptions

    report = DrillReport(scenario=scenario, speed=speed or 1.0, dry_run=dry_run)

    def on_step(applied: Any) -> None:
        step = applied.step
        report.marks.append(
            Mark(step.do, time.monotonic(), applied.time, step.target, getattr(step, "note", None))
        )

    has_ipmi = any(d.driver == "ipmi" for d in site.devices)
    options = SimulatorOptions(
        scenario=scenario,
        speed=speed,
        nut_port=nut_port,
        modbus_port=0,
        snmp_port=0,
        # Every simulated server gets a BMC of its own: only when the site has IPMI devices.
        ipmi_port=0 if has_ipmi else None,
        on_step=on_step,
    )
    async with RunningSimulator(options) as sim:
        report.speed = sim.info.speed
        aimed, report.skipped_devices = point_at_simulator(site, sim.info, nut_face)
        agent = Agent(aimed, sinks=sinks)
        agent.drill = True
        agent.dry_run = dry_run
        agent.journal_name = "drill-journal.sqlite"

        def record(event: Event) -> None:
            report.events.append((time.monotonic(), event))
            first = report.runtime_at_decision is None
            if event.type == "shutdown.started" and agent.policy is not None and first:
                report.runtime_at_decision = agent.policy.last_runtime
            if on_event is not None:
                on_event(event)

        agent.on_event(record)
        await agent.start()
        try:
            face = _nut_face(agent)
            if face is not None:
                host, _ = face.config.address
                report.nut_face = f"{host}:{face.port}"
            await _wait_for_the_end(sim, agent, report, on_tick)
            _learned(agent, report)
        finally:
            await agent.stop()
    return report


def _nut_face(agent: Agent) -> NutFace | None:
    """The NUT driver's site service, when the site has a `nut_server:` face."""
    face = agent.services.get("nut")
    return face if isinstance(face, NutFace) else None


def _learned(agent: Agent, report: DrillReport) -> None:
    """What the drill taught: each target's time, the plan's expected duration from now."""
    face = _nut_face(agent)
    if face is not None:
        report.secondaries = dict(face.fsd_seen)
    policy = agent.policy
    if policy is None or report.dry_run:
        return
    report.learned = policy.learned_times()
    report.expected_after = policy.expected_duration()


async def _wait_for_the_end(
    sim: Any, agent: Agent, report: DrillReport, on_tick: Callable[[DrillReport, Any], None] | None
) -> None:
    settle_until: float | None = None
    while True:
        if on_tick is not None:
            on_tick(report, sim)
        if settle_until is None and sim.finished.is_set():
            settle_until = time.monotonic() + SETTLE_MAX
        if settle_until is not None:
            policy = agent.policy
            busy = policy is not None and (
                policy.plan_task is not None
                or policy.recovery_task is not None
                or policy.recovery_pending
            )
            if not busy or time.monotonic() > settle_until:
                return
        await asyncio.sleep(0.25)


#: Programs (and `systemctl` verbs) that take the host down: a drill never runs them for real.
HOST_POWER_PROGRAMS = frozenset({"poweroff", "halt", "shutdown", "reboot"})
HOST_POWER_VERBS = frozenset({"poweroff", "halt", "reboot", "kexec", "suspend", "hibernate"})


def host_power_steps(site: SiteConfig) -> list[str]:
    """The plan's `run:` steps that would power this box off (`systemctl poweroff` ...), and
    its `ssh:` steps that would power a remote host off."""
    found = []
    for section in (site.shutdown, site.recovery):
        for stage in section.stages if section else []:
            for step in stage.steps:
                argv = step.run or (step.ssh.run if step.ssh else [])
                if not argv:
                    continue
                program = Path(argv[0]).name
                if program in HOST_POWER_PROGRAMS or (
                    program == "systemctl" and HOST_POWER_VERBS & set(argv[1:])
                ):
                    on = f"ssh {step.ssh.host}: " if step.ssh else ""
                    found.append(f"stage {stage.name}: {on}{' '.join(argv)}")
    return found


def scenario_problem(scenario: str) -> str | None:
    """Why this scenario cannot be played (unknown name, unreadable or invalid file), or None."""
    from facility_agent.simulators.scenario import ScenarioError, load_scenario

    try:
        load_scenario(scenario)
    except ScenarioError as exc:
        return str(exc)
    return None


class Progress:
    """A line per scenario step and per event while a drill runs, in the order they happened,
    so a 90 s drill is not 90 s of silence."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.marks = 0
        self.events = 0

    def tick(self, report: DrillReport, sim: Any) -> None:
        new: list[tuple[float, str]] = []
        for m in report.marks[self.marks :]:
            target = f" {m.target}" if m.target else ""
            note = f" ({m.note})" if m.note else ""
            new.append((m.at, f"world: {m.what}{target}{note}"))
        for at, ev in report.events[self.events :]:
            new.append((at, f"event {ev.severity}: {ev.type} {ev.device}: {ev.message}"))
        self.marks, self.events = len(report.marks), len(report.events)
        for at, line in sorted(new, key=lambda item: item[0]):
            self.out(f"  [{at - report.started:7.2f}s] {line}")


def write_report(report: DrillReport, path: Path | None = None) -> str:
    text = "\n".join(report.lines())
    if path is not None:
        path.write_text(text + "\n")
    return text
