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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facility_agent.config.site import SiteConfig
from facility_agent.core.driver import DeviceConfig, SimulatorFaces, SiteService
from facility_agent.core.model import Event
from facility_agent.core.registry import driver_class, driver_classes
from facility_agent.core.sink import Sink
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
    #: The drivers' site services the drill ran (the NUT face): they add to the report.
    services: list[SiteService] = field(default_factory=list)
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
        for service in self.services:
            out += service.drill_lines(decide[0] if decide else None, real)
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
    site: SiteConfig, sim: SimulatorFaces, options: Mapping[str, Any] | None = None
) -> tuple[SiteConfig, list[str]]:
    """The site with each device aimed at its simulated counterpart; the ones left out. Each
    driver aims its own devices, and moves its site services where a drill may run them
    (`options`: the drill's command-line options, `--nut-face-listen` ...)."""
    devices: list[DeviceConfig] = []
    skipped: list[str] = []
    for dev in site.devices:
        aimed = driver_class(dev.driver).aim_at_simulator(dev, sim)
        if aimed is None:
            skipped.append(dev.id)
        else:
            devices.append(aimed)
    sections = dict(site.sections)
    for cls in driver_classes().values():
        own = {key: sections[key] for key in cls.site_sections if key in sections}
        if own:
            sections.update(cls.drill_sections(own, options or {}))
    return site.model_copy(update={"devices": devices, "sections": sections}), skipped


async def run_drill(
    site: SiteConfig,
    scenario: str,
    *,
    speed: float | None = None,
    dry_run: bool = False,
    sinks: list[Sink] | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_tick: Callable[[DrillReport, Any], None] | None = None,
    options: Mapping[str, Any] | None = None,
) -> DrillReport:
    """Play `scenario`; `options` are the drivers' drill options by `dest` (`nut_face_listen`)."""
    from facility_agent.simulators.serve import RunningSimulator, SimulatorOptions

    report = DrillReport(scenario=scenario, speed=speed or 1.0, dry_run=dry_run)

    def on_step(applied: Any) -> None:
        step = applied.step
        report.marks.append(
            Mark(step.do, time.monotonic(), applied.time, step.target, getattr(step, "note", None))
        )

    simulated = SimulatorOptions.for_drivers(
        {d.driver for d in site.devices}, scenario=scenario, speed=speed, on_step=on_step
    )
    async with RunningSimulator(simulated) as sim:
        report.speed = sim.info.speed
        aimed, report.skipped_devices = point_at_simulator(site, sim.info, options)
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
            await _wait_for_the_end(sim, agent, report, on_tick)
            _learned(agent, report)
        finally:
            await agent.stop()
    return report


def _learned(agent: Agent, report: DrillReport) -> None:
    """What the drill taught: each target's time, the plan's expected duration from now."""
    report.services = list(agent.services.values())
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
