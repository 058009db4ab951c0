"""`facility-agent demo`: the whole path on a fresh machine, with nothing to configure.

The bundled simulated site serves NUT on a free port, a private Mosquitto listens on another,
and the agent polls the one and publishes to the other, exactly as it would on a real site.
What the demo shows comes back through the broker, so it is what any MQTT consumer would see.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from facility_agent.config.site import MqttConfig, parse_site
from facility_agent.tools.local_broker import BrokerError, LocalMosquitto
from facility_agent.tools.mqtt_watch import MqttWatcher, Received, SiteView

log = logging.getLogger(__name__)

SITE = "demo"
PREFIX = "facility"
#: Which event, from which devices, a scenario action should produce; None = every UPS.
EXPECTED: dict[str, str] = {
    "utility.fail": "power.on_battery",
    "utility.restore": "power.on_line",
    "ups.comm_dead": "device.comm_lost",
    "ups.driver_down": "device.comm_lost",
    "ups.comm_restore": "device.comm_restored",
    "ups.driver_up": "device.comm_restored",
}
SEVERITY_STYLE = {"info": "green", "warning": "yellow", "critical": "bold red"}


@dataclass
class StepSeen:
    action: str
    target: str | None
    sim_time: float
    at: float
    note: str | None


@dataclass
class DemoRun:
    scenario: str
    speed: float
    steps: list[StepSeen] = field(default_factory=list)
    world: dict[str, Any] = field(default_factory=dict)
    sim_time: float = 0.0
    duration: float = 0.0
    ups: list[str] = field(default_factory=list)


def _fmt_num(value: Any, suffix: str = "", scale: float = 1.0) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value / scale:.0f}{suffix}"
    return "-"


def describe_world(world: dict[str, Any]) -> str:
    if not world:
        return ""
    gen = world.get("generator") or {}
    ats = world.get("ats") or {}
    utility = "up" if (world.get("utility") or {}).get("up") else "DOWN"
    fault = f" ({gen['fault']})" if gen.get("fault") else ""
    return (
        f"utility {utility}, generator {gen.get('state', '-')}{fault}, "
        f"ATS on {ats.get('source', '-')}"
    )


def render(run: DemoRun, view: SiteView, started: float) -> Group:
    world = describe_world(run.world)
    head = Text.assemble(
        ("facility-agent demo", "bold"),
        f"  scenario {run.scenario}  x{run.speed:g}  ",
        f"t={run.sim_time:5.1f}/{run.duration:.0f} s simulated, "
        f"{time.monotonic() - started:4.1f} s real\n",
        ("world: ", "bold"),
        (world, "bold red" if "DOWN" in world or "fault" in world else "green"),
        f"\nagent on MQTT: {view.agent_status or '-'}",
    )
    devices = Table(title="devices, as published on MQTT", expand=True)
    for col in ("device", "comm", "status", "charge", "runtime", "load", "input V"):
        devices.add_column(col)
    for name, st in sorted(view.states.items()):
        m = st.get("metrics", {})
        status = " ".join(st.get("status", []))
        devices.add_row(
            name,
            Text(st.get("comm", "?"), "green" if st.get("comm") == "ok" else "bold red"),
            Text(status, "bold red" if "OB" in status.split() else "green"),
            _fmt_num(m.get("battery.charge"), "%"),
            _fmt_num(m.get("battery.runtime"), " min", 60),
            _fmt_num(m.get("ups.load"), "%"),
            _fmt_num(m.get("input.voltage")),
        )
    events = Table(title="events on MQTT", expand=True)
    for col in ("+s", "severity", "type", "message"):
        events.add_column(col)
    for rec in view.events[-10:]:
        ev = rec.payload
        events.add_row(
            f"{rec.at - started:5.1f}",
            Text(ev.get("severity", ""), SEVERITY_STYLE.get(ev.get("severity", ""), "")),
            ev.get("type", ""),
            ev.get("message", ""),
        )
    return Group(head, devices, events)


class PlainPrinter:
    """Plain lines for logs and pipes: each scenario step, event and status change once."""

    def __init__(self, out: Callable[[str], None], started: float) -> None:
        self.out = out
        self.started = started
        self.steps = 0
        self.events = 0
        self.status: dict[str, tuple[str, str]] = {}
        self.world: str = ""

    def update(self, run: DemoRun, view: SiteView) -> None:
        """What is new since the last call, sorted by when it happened (a world change is seen
        at the tick after the step that caused it, so it comes after that step)."""
        now = time.monotonic()
        new: list[tuple[float, str]] = []
        world = describe_world(run.world)
        if world and world != self.world:
            self.world = world
            new.append((now, f"world: {world}"))
        for step in run.steps[self.steps :]:
            target = f" {step.target}" if step.target else ""
            note = f" ({step.note})" if step.note else ""
            new.append((step.at, f"world: {step.action}{target}{note}"))
        self.steps = len(run.steps)
        for rec in view.events[self.events :]:
            ev = rec.payload
            new.append(
                (
                    rec.at,
                    f"event {ev.get('severity')}: "
                    f"{ev.get('type')} {ev.get('device')}: {ev.get('message')}",
                )
            )
        self.events = len(view.events)
        for name, st in sorted(view.states.items()):
            state = (st.get("comm", "?"), " ".join(st.get("status", [])))
            if self.status.get(name) != state:
                self.status[name] = state
                m = st.get("metrics", {})
                new.append(
                    (
                        now,
                        f"state {name}: comm {state[0]}, "
                        f"status {state[1] or '-'}, "
                        f"charge {_fmt_num(m.get('battery.charge'), '%')}, "
                        f"runtime {_fmt_num(m.get('battery.runtime'), ' min', 60)}",
                    )
                )
        for at, line in sorted(new, key=lambda item: item[0]):
            self.out(f"[{at - self.started:6.2f}s] {line}")


def detection(run: DemoRun, events: list[Received], ups: list[str]) -> list[tuple[str, str, float]]:
    """(what happened in the world, device, seconds until its event arrived on MQTT)."""
    found = []
    for step in run.steps:
        expected = EXPECTED.get(step.action)
        if expected is None:
            continue
        for device in [step.target] if step.target else ups:
            for rec in events:
                ev = rec.payload
                if rec.at >= step.at and ev.get("type") == expected and ev.get("device") == device:
                    found.append((f"{step.action} -> {expected}", device, rec.at - step.at))
                    break
    return found


async def run_demo(args: argparse.Namespace, console: Console, live: bool) -> int:
    """The bundled demo site (config/demo-site.yaml) through the drill machinery: the same
    agent, policy and plan a real site runs, publishing to a private broker."""
    from importlib.resources import files

    from facility_agent.tools.drill import run_drill

    started = time.monotonic()
    run = DemoRun(scenario=args.scenario, speed=args.speed)
    broker = LocalMosquitto()
    await broker.start()
    state = tempfile.TemporaryDirectory(prefix="facility-agent-demo-")
    try:
        text = (files("facility_agent.data") / "demo-site.yaml").read_text()
        site = parse_site(text, "demo-site.yaml")
        mqtt = MqttConfig(host="127.0.0.1", port=broker.port, prefix=PREFIX, heartbeat=30.0)
        site = site.model_copy(update={"mqtt": mqtt, "state_dir": Path(state.name)})
        watcher = MqttWatcher("127.0.0.1", broker.port, PREFIX, site.site)
        await watcher.start()
        printer = PlainPrinter(console.print if live else print_flush, started)
        screen_cm = Live(console=console, refresh_per_second=4) if live else _Null()
        with screen_cm as screen:

            def on_tick(report: Any, sim: Any) -> None:
                run.world = sim.site.snapshot()
                run.sim_time = float(run.world.get("time", 0.0))
                run.duration = sim.info.duration or 60.0
                run.speed = sim.info.speed
                run.ups = list(sim.info.ups)
                run.steps = [
                    StepSeen(m.what, m.target, m.sim_time or 0.0, m.at, m.note)
                    for m in report.marks
                ]
                if live:
                    screen.update(render(run, watcher.view, started))
                else:
                    printer.update(run, watcher.view)

            report = await run_drill(site, args.scenario, speed=args.speed, on_tick=on_tick)
        await asyncio.sleep(0.3)  # let the retained `offline` reach the watcher
        await watcher.stop()
    finally:
        await broker.stop()
        state.cleanup()
    view = watcher.view
    if not live:
        printer.update(run, view)
    return summarize(run, view, run.ups, started, console, report.lines())


def summarize(
    run: DemoRun,
    view: SiteView,
    ups: list[str],
    started: float,
    console: Console,
    drill: list[str] | None = None,
) -> int:
    counts: dict[str, int] = {}
    for rec in view.events:
        kind = rec.payload.get("type", "?")
        counts[kind] = counts.get(kind, 0) + 1
    lines = [
        "",
        f"summary: scenario {run.scenario} ({run.duration:.0f} s simulated at x{run.speed:g}) "
        f"in {time.monotonic() - started:.1f} s",
        f"  MQTT messages received: {view.messages}; events: "
        + (", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "none"),
        f"  agent status at the end: {view.agent_status}",
    ]
    for what, device, delay in detection(run, view.events, ups):
        lines.append(
            f"  {what} for {device}: on MQTT {delay:.2f} s after it happened "
            "(detection + publishing + delivery)"
        )
    lines.extend(drill or [])
    problems = []
    missing = [u for u in ups if u not in view.states]
    if missing:
        problems.append(f"no state arrived on MQTT for {', '.join(missing)}")
    if view.agent_status != "offline":
        problems.append(f"agent status ended as {view.agent_status!r}, not 'offline'")
    for line in lines:
        console.print(line, highlight=False) if console.is_terminal else print_flush(line)
    for problem in problems:
        print_flush(f"  PROBLEM: {problem}")
    return 2 if problems else 0


def print_flush(line: str) -> None:
    print(line, flush=True)


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *_: object) -> None:
        return None


def demo(args: argparse.Namespace) -> int:
    from facility_agent.tools.drill import scenario_problem

    problem = scenario_problem(args.scenario)
    if problem:
        print(f"facility-agent demo: {problem}", file=sys.stderr)
        return 1
    console = Console()
    live = console.is_terminal and not args.plain
    if args.log_level != "debug":
        # What the demo shows is what arrived on MQTT; the agent's own log lines would tear the
        # live view and repeat every event in plain mode.
        logging.getLogger().setLevel(logging.CRITICAL)
    try:
        return asyncio.run(run_demo(args, console, live))
    except BrokerError as exc:
        print(f"facility-agent demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 2
