"""`facility-agent runbook`: the site's disaster-recovery plan, written from the objects the agent
runs (SiteConfig, PolicyConfig) and from its plan journals, so it cannot drift from what the box
will really do.

The journals (`{state_dir}/journal.sqlite`, `drill-journal.sqlite`) are opened read-only: the
runbook may be written on the site box while the agent runs. HTML is the same Markdown rendered
by markdown-it-py (already a dependency of rich), with a small inline stylesheet.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facility_agent import __version__
from facility_agent.actions.targets import public_uri
from facility_agent.config.outputs import redact_url
from facility_agent.config.policy import ShutdownConfig, StageConfig, StepConfig
from facility_agent.config.site import ConfigError, SiteConfig, load_site
from facility_agent.core.driver import AddCommand
from facility_agent.policy.durations import (
    estimate_plan,
    estimate_step,
    merged,
)
from facility_agent.policy.engine import DRILL_JOURNAL
from facility_agent.policy.journal import PlanHistory, read_history, read_timings

JOURNAL = "journal.sqlite"


def default_state_dir(site: SiteConfig) -> Path:
    """Where the agent keeps its journals, found without creating anything."""
    if site.state_dir is not None:
        return site.state_dir
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / site.site
    system = Path("/var/lib/facility-agent") / site.site
    if system.exists():
        return system
    return Path.home() / ".local" / "state" / "facility-agent" / site.site


# -- formatting helpers ----------------------------------------------------------------------


def secs(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value >= 120:
        return f"{value:.0f} s ({value / 60:.1f} min)"
    return f"{value:g} s" if value == int(value) else f"{value:.1f} s"


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(head: list[str], rows: Iterable[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def where(dev: Any) -> str:
    if getattr(dev, "serial", None):
        return f"serial {dev.serial}"
    host = getattr(dev, "host", None)
    port = getattr(dev, "port", None)
    if host:
        return f"{host}:{port}" if port else str(host)
    return ""


def what(dev: Any) -> str:
    for key in ("ups", "profile"):
        value = getattr(dev, key, None)
        if value:
            return f"{key} {value}"
    return ""


def step_kind(step: StepConfig) -> str:
    if step.kind == "run":
        return "command " + " ".join(step.run or [])
    if step.kind == "device":
        return f"device action `{step.action}` on {step.device}"
    if step.ssh is not None:
        t = step.ssh
        return (
            f"ssh {t.where}: {' '.join(t.run)} (host key {t.known_hosts}, success: {t.success}, "
            f"connect within {t.connect_timeout:g} s)"
        )
    if step.vm is not None:
        vm = step.vm
        then = "then destroyed" if vm.destroy else "else the step fails"
        order = " then ".join(f"`{g}`" for g in vm.guests)
        back = ", started again on recovery" if vm.start_on_recovery else ""
        return (
            f"libvirt guests at {public_uri(vm.uri)}: {order}; shut down, "
            f"{secs(step.timeout)} each, {then}{back}"
        )
    if step.containers is not None:
        c = step.containers
        order = " then ".join(
            [*(f"`{n}`" for n in c.names), *(f"project `{p}`" for p in c.projects)]
        )
        back = ", started again on recovery" if c.start_on_recovery else ""
        return f"containers at {c.socket}: {order}; SIGKILL after {secs(c.grace)}{back}"
    return "wait"


def step_estimate(step: StepConfig) -> float:
    """What a step may take: a wait takes its time, a vm:/containers: step its timeout (vm) or
    grace (containers) per priority entry, one after another; anything else its timeout."""
    if step.wait is not None:
        return float(step.wait)
    if step.vm is not None:
        return float(step.timeout) * len(step.vm.guests)
    if step.containers is not None:
        entries = len(step.containers.names) + len(step.containers.projects)
        return min(float(step.containers.grace), float(step.timeout)) * entries
    return float(step.timeout)


def learned_steps(runs: list[PlanHistory], kind: str) -> dict[tuple[int, int], float]:
    """Median duration of each step over the completed runs of a kind."""
    seen: dict[tuple[int, int], list[float]] = {}
    for h in runs:
        if h.run.kind != kind or h.run.state != "completed":
            continue
        for s in h.steps:
            if s.state == "done" and s.duration is not None:
                seen.setdefault((s.stage, s.step), []).append(s.duration)
    return {k: statistics.median(v) for k, v in seen.items()}


def learned_total(runs: list[PlanHistory], kind: str) -> float | None:
    values = [
        h.run.duration
        for h in runs
        if h.run.kind == kind and h.run.state == "completed" and h.run.duration is not None
    ][:5]
    return statistics.median(values) if values else None


# -- the runbook -----------------------------------------------------------------------------


@dataclass
class Inputs:
    site: SiteConfig
    source: Path
    state_dir: Path
    real: list[PlanHistory]
    drills: list[PlanHistory]
    #: Device states (`P/{device}/state` payloads) when read from the broker, else None.
    live: dict[str, dict[str, Any]] | None = None
    #: Each shutdown target's learned time (policy/durations.py): real runs, else drills.
    timings: dict[str, float] = field(default_factory=dict)


def gather(site: SiteConfig, source: Path, state_dir: Path | None = None) -> Inputs:
    sdir = state_dir or default_state_dir(site)
    return Inputs(
        site,
        source,
        sdir,
        read_history(sdir / JOURNAL, limit=20),
        read_history(sdir / DRILL_JOURNAL, limit=20),
        timings=merged(read_timings(sdir / JOURNAL), read_timings(sdir / DRILL_JOURNAL)),
    )


def group_runtime(inp: Inputs) -> tuple[float | None, str]:
    """The power group's runtime left from the last known states, as the engine computes it."""
    sd = inp.site.shutdown
    if sd is None or inp.live is None:
        return None, "unknown (no live state: run with --live to read it from the broker)"
    group = next(g for g in inp.site.groups if g.id == sd.group)
    runtimes = []
    for member in group.members:
        st = inp.live.get(member.device) or {}
        value = (st.get("metrics") or {}).get("battery.runtime")
        if isinstance(value, int | float) and not isinstance(value, bool):
            runtimes.append(float(value))
    runtimes.sort(reverse=True)
    if len(runtimes) < group.min:
        return None, f"unknown (fewer than {group.min} member(s) of {group.id} report a runtime)"
    value = runtimes[group.min - 1]
    return value, f"{secs(value)} (the {group.min}. best of {group.id}, from the last states)"


def render_markdown(inp: Inputs) -> str:
    site = inp.site
    out: list[str] = []
    digest = hashlib.sha256(inp.source.read_bytes()).hexdigest()[:12]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out += [
        f"# Disaster-recovery runbook: site `{site.site}`",
        "",
        f"Generated {now} by facility-agent {__version__} from `{inp.source}` "
        f"(sha256 {digest}) and the plan journals in `{inp.state_dir}`. "
        "It describes what the agent running this file will do; regenerate it after every "
        "change (`facility-agent runbook -c SITE.yaml`).",
        "",
    ]
    out += _devices(site)
    out += _groups(site)
    out += _triggers(site, inp)
    out += _shutdown(site, inp)
    out += _recovery(site, inp)
    out += _hooks(site)
    out += _notify(site)
    out += _history(inp)
    return "\n".join(out).rstrip() + "\n"


def _devices(site: SiteConfig) -> list[str]:
    out = ["## 1. Devices and power paths", ""]
    rows = [
        [d.id, d.driver, where(d), what(d), secs(d.interval), d.lost_after] for d in site.devices
    ]
    out += table(
        ["device", "driver", "address", "model", "poll interval", "lost after (polls)"], rows
    )
    if site.topology:
        out += ["Power paths (what feeds what):", ""]
        for device, sources in site.topology.items():
            out.append(f"- `{device}` is fed by {', '.join(f'`{s}`' for s in sources)}")
        out += ["", "```", *_tree(site.topology), "```", ""]
    else:
        out += ["No `topology:` in the site file: alerts are not folded along the power path.", ""]
    return out


def _tree(topology: dict[str, list[str]]) -> list[str]:
    feeds: dict[str, list[str]] = {}
    for device, sources in topology.items():
        for source in sources:
            feeds.setdefault(source, []).append(device)
    roots = [s for s in feeds if s not in topology]
    lines: list[str] = []

    def walk(node: str, depth: int, seen: frozenset[str]) -> None:
        lines.append(("   " * (depth - 1) + "└─ " if depth else "") + node)
        for child in feeds.get(node, []):
            if child not in seen:
                walk(child, depth + 1, seen | {child})

    for root in roots:
        walk(root, 0, frozenset({root}))
    return lines


def _groups(site: SiteConfig) -> list[str]:
    out = ["## 2. Redundancy groups", ""]
    if not site.groups:
        return [*out, "None configured.", ""]
    rows = []
    for g in site.groups:
        members = ", ".join(str(m) for m in g.members)
        if g.kind == "power":
            healthy = "on line (OL, not OB/OFF/FSD) with comm ok"
        elif any(m.metric for m in g.members):
            healthy = f"metric reads one of {', '.join(g.ok_values)}"
        else:
            healthy = "comm ok"
        degraded = (
            f"fewer than {len(g.members)} healthy: degraded (warning); "
            f"fewer than {g.min}: lost (critical)"
        )
        rows.append([g.id, g.kind, members, g.min, healthy, degraded, secs(g.hold)])
    out += table(
        ["group", "kind", "members", "min", "a member is healthy when", "degrades when", "hold"],
        rows,
    )
    return out


def _triggers(site: SiteConfig, inp: Inputs) -> list[str]:
    out = ["## 3. Shutdown triggers", ""]
    sd = site.shutdown
    if sd is None:
        return [*out, "No `shutdown:` section: the agent never shuts the site down.", ""]
    t = sd.triggers
    expected, _ = _expected(sd, inp)
    rows: list[list[object]] = []
    if t.on_battery_for is not None:
        rows.append(
            ["on battery for", f"group `{sd.group}` on battery for {secs(t.on_battery_for)}"]
        )
    if t.runtime_below is not None:
        rows.append(["runtime below", f"runtime left < {secs(t.runtime_below)} for {secs(t.hold)}"])
    if t.runtime_margin is not None:
        rows.append(
            [
                "runtime margin",
                f"runtime left < expected plan duration {secs(expected)} + margin "
                f"{secs(t.runtime_margin)} = {secs(expected + t.runtime_margin)}, "
                f"for {secs(t.hold)}",
            ]
        )
    if t.low_battery is not None:
        confirm = "; ".join(
            f"{c.device} {c.metric}"
            + (f" < {c.below:g}" if c.below is not None else "")
            + (f" > {c.above:g}" if c.above is not None else "")
            + (f" = {c.equals}" if c.equals is not None else "")
            for c in t.low_battery.confirm
        )
        rows.append(
            [
                "low battery",
                f"LB on a UPS that is also on battery, held {secs(t.low_battery.hold)}"
                + (f", confirmed by {confirm}" if confirm else ""),
            ]
        )
    if t.fsd:
        rows.append(["forced shutdown", "a member of the group raises FSD: at once"])
    if t.comm_lost_on_battery:
        rows.append(["dead UPS", "a member lost while last known on battery counts as flat"])
    if t.generator_not_running is not None:
        g = t.generator_not_running
        rows.append(
            [
                "generator not running",
                f"`{g.device}` {g.metric} is not `{g.running}` {secs(g.after)} "
                "after the power was lost",
            ]
        )
    out += table(["trigger", "fires when"], rows)
    out += [
        f"A running plan is cancelled when power is back for {secs(sd.cancel_after)}, "
        "unless a `no_return` stage has begun. After a plan, a new one starts within "
        f"{secs(sd.cooldown)} only on a critical trigger (low battery, FSD, runtime).",
        "",
    ]
    return out


def _expected(sd: ShutdownConfig, inp: Inputs) -> tuple[float, str]:
    plan = estimate_plan(sd.stages, inp.timings)
    if plan.learned_any:
        return plan.seconds, (
            "from each target's learned time: each stage as long as its slowest step, "
            "a target not yet measured counted with its bound"
        )
    real = learned_total(inp.real, "shutdown")
    if real is not None:
        return real, "learned from real runs"
    drill = learned_total(inp.drills, "shutdown")
    if drill is not None:
        return drill, "learned from drills"
    return float(sd.expected_duration), "as configured (`expected_duration`)"


def learned_text(
    step: StepConfig, timings: dict[str, float], positional: float | None
) -> tuple[str, str]:
    """The step's learned per-target times, and what it is expected to take."""
    est = estimate_step(step, timings)
    if step.wait is not None:
        return "-", secs(est.seconds)
    if not est.learned:
        return (secs(positional) if positional is not None else "-"), secs(est.seconds)
    if len(est.learned) == 1 and (step.vm or step.containers) is None:
        text = secs(est.learned[0][1])
    else:
        text = ", ".join(f"{key.rsplit(' ', 1)[-1]} {secs(t)}" for key, t in est.learned)
    if est.bounded:
        text += f"; not yet measured: {len(est.bounded)}"
    return text, secs(est.seconds)


def _stages(
    stages: list[StageConfig],
    learned: dict[tuple[int, int], float],
    offset: int = 0,
    timings: dict[str, float] | None = None,
) -> list[str]:
    rows: list[list[object]] = []
    for si, stage in enumerate(stages):
        for ti, step in enumerate(stage.steps):
            took, expected = learned_text(step, timings or {}, learned.get((si, ti)))
            extra = []
            if step.undo:
                extra.append(f"undo: {step.undo}")
            if step.on_failure == "stop":
                extra.append("a failure stops the plan")
            extra.append(f"after a crash: {'rerun' if step.rerun_on_resume else 'skip'}")
            rows.append(
                [
                    f"{si + 1 + offset}. {stage.name}"
                    + (" (no return)" if stage.no_return else "")
                    + (" (FSD to NUT secondaries)" if stage.notify_nut_secondaries else ""),
                    step.label,
                    step_kind(step),
                    secs(step_estimate(step))
                    + (" (wait)" if step.wait is not None else " (timeout)"),
                    took,
                    expected,
                    ", ".join(extra),
                ]
            )
    head = ["stage", "step", "what", "configured", "learned (median)", "expected", "notes"]
    return table(head, rows)


def _shutdown(site: SiteConfig, inp: Inputs) -> list[str]:
    sd = site.shutdown
    out = ["## 4. Shutdown order", ""]
    if sd is None:
        return [*out, "None configured.", ""]
    expected, how = _expected(sd, inp)
    runtime, runtime_text = group_runtime(inp)
    worst = sum(max(step_estimate(s) for s in stage.steps) for stage in sd.stages)
    out += [
        "Stages run in order; the steps of one stage run in parallel.",
        "",
        *_stages(sd.stages, learned_steps(inp.real + inp.drills, "shutdown"), 0, inp.timings),
        f"- Expected duration of the whole plan: **{secs(expected)}** ({how}); "
        f"configured `expected_duration` {secs(sd.expected_duration)} (the guess until a "
        f"target is measured); the sum of each stage's longest step bound is {secs(worst)}.",
        f"- Battery runtime of group `{sd.group}`: **{runtime_text}**.",
    ]
    if runtime is not None:
        margin = runtime - expected
        verdict = "enough" if margin > 0 else "NOT enough: the plan would not finish on battery"
        out.append(
            f"- Margin: {secs(abs(margin))} {'left' if margin > 0 else 'short'} ({verdict})."
        )
    return [*out, ""]


def _recovery(site: SiteConfig, inp: Inputs) -> list[str]:
    out = ["## 5. Recovery order", ""]
    sd, rec = site.shutdown, site.recovery
    if sd is None:
        return [*out, "Nothing to recover: no shutdown plan.", ""]
    undo = [
        (si, step)
        for si in reversed(range(len(sd.stages)))
        for step in sd.stages[si].steps
        if step.undo
    ]
    if rec is not None:
        out.append(
            f"Recovery starts when group `{sd.group}` has been on line for {secs(rec.stable_for)} "
            f"with every on-line member charged at least {rec.min_charge:g}%; each device step "
            f"is tried {rec.retries} time(s)."
        )
    else:
        out.append("No `recovery:` section: only the undo actions below run when power is back.")
    out.append("")
    if undo:
        out += ["First, what the shutdown stopped is brought back, last stopped first:", ""]
        out += [
            f"{i + 1}. `{step.device}` {step.undo} (undoes {step.action})"
            for i, (_, step) in enumerate(undo)
        ]
        out.append("")
    if rec is not None and rec.stages:
        out += ["Then the recovery stages:", ""]
        out += _stages(rec.stages, learned_steps(inp.real + inp.drills, "recovery"), 0)
    return out


def _hooks(site: SiteConfig) -> list[str]:
    out = ["## 6. Hooks", ""]
    if not site.hooks:
        return [*out, "None configured.", ""]
    rows = [
        [", ".join(h.events), ", ".join(h.only) or "all", " ".join(h.run), secs(h.timeout)]
        for h in site.hooks
    ]
    return out + table(["events", "only for", "command (argv, no shell)", "timeout"], rows)


def _notify(site: SiteConfig) -> list[str]:
    out = ["## 7. Who is notified where", ""]
    rows: list[list[object]] = []
    for i, route in enumerate(site.notify or []):
        rows.append(
            [
                route.name or f"route-{i + 1}",
                redact_url(route.url.get_secret_value()),
                str(route.min_severity),
                ", ".join(route.events) or "all",
                ", ".join(route.exclude_events) or "-",
            ]
        )
    if rows:
        out += table(["route", "where", "from severity", "events", "except"], rows)
    else:
        out += ["No chat or email routes (`notify:`).", ""]
    if site.mqtt is not None:
        out.append(
            f"- MQTT: `{site.mqtt.host}:{site.mqtt.port}`, "
            f"topics `{site.mqtt.prefix}/{site.site}/#`"
        )
    if site.influxdb is not None:
        out.append(f"- InfluxDB: {redact_url(str(site.influxdb.url))}")
    if site.prometheus is not None:
        out.append(f"- Prometheus: `{site.prometheus.listen}` (/metrics, /healthz)")
    return [*out, ""]


def _history(inp: Inputs) -> list[str]:
    out = ["## 8. Last drills and runs", ""]
    for title, runs in (("Drills", inp.drills), ("Real runs", inp.real)):
        out += [f"### {title}", ""]
        if not runs:
            out += [f"None recorded in `{inp.state_dir}`.", ""]
            continue
        out += table(
            ["run", "kind", "started", "state", "duration", "reason"],
            [
                [
                    r.id,
                    r.kind,
                    datetime.fromtimestamp(r.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                    r.state,
                    secs(r.duration),
                    r.reason,
                ]
                for r in (h.run for h in runs[:10])
            ],
        )
        last = runs[0]
        if last.steps:
            out += [f"Steps of run {last.run.id} ({last.run.kind}, {last.run.state}):", ""]
            out += table(
                ["stage", "step", "outcome", "took", "detail"],
                [
                    [s.stage + 1, s.label, s.state, secs(s.duration), (s.detail or "")[:120]]
                    for s in last.steps
                ],
            )
    return out


_CSS = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;
line-height:1.4}table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #bbb;
padding:.25em .5em;text-align:left;vertical-align:top}th{background:#eee}
code,pre{background:#f4f4f4}pre{padding:.5em}h2{border-bottom:1px solid #ccc;margin-top:1.5em}"""


def render_html(markdown: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_CSS}</style></head>\n<body>\n{body}</body></html>\n"
    )


def cmd_runbook(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    inp = gather(site, Path(args.config), Path(args.state_dir) if args.state_dir else None)
    if args.live:
        from facility_agent.cli.status import fetch

        if site.mqtt is None:
            print("runbook: --live needs an mqtt section", file=sys.stderr)
            return 1
        data = fetch(
            site.mqtt.host,
            site.mqtt.port,
            f"{site.mqtt.prefix}/{site.site}",
            username=site.mqtt.username,
            password=site.mqtt.password.get_secret_value() if site.mqtt.password else None,
            tls=site.mqtt.tls,
        )
        if not data.reachable:
            print(f"runbook: {data.error}; the runtime is left unknown", file=sys.stderr)
        else:
            inp.live = data.devices
    text = render_markdown(inp)
    fmt = args.format or ("html" if args.output and args.output.endswith(".html") else "md")
    if fmt == "html":
        text = render_html(text, f"DR runbook: {site.site}")
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            print(f"runbook: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"runbook written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_parser(command: AddCommand) -> None:
    what = "the site's disaster-recovery plan (Markdown or HTML) from the site file"
    p = command("runbook", what, cmd_runbook, config=True)
    p.add_argument("--format", choices=["md", "html"], help="[md, or html for -o *.html]")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.add_argument("--state-dir", help="where the plan journals are [the agent's state dir]")
    p.add_argument(
        "--live", action="store_true", help="read the battery runtime from the broker's states"
    )
