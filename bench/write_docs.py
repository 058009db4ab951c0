"""Regenerates docs/benchmarks.md from bench/out/*.json (written by the benchmark scripts).

Usage: .venv/bin/python bench/write_docs.py     (bench/run_all.sh runs everything, then this)
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from _common import OUT_DIR, REPO

DOC = REPO / "docs" / "benchmarks.md"


def load(name: str) -> dict[str, Any] | None:
    path = OUT_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def ms(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{1000 * x:.0f}"


def num(x: float | None, fmt: str = ".0f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def ratio(a: float, b: float) -> str:
    return "-" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:.1f}x"


def machine_section(det: dict[str, Any] | None, cap: dict[str, Any] | None) -> list[str]:
    m = (det or cap or {}).get("machine", {})
    lines = [
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m.get('cpu', '?')}, nproc = {m.get('nproc', '?')} (shared with other work) |",
        f"| Python | {m.get('python', '?')} |",
        f"| kernel | {m.get('kernel', '?')} |",
        f"| nut-server / nut-client | {m.get('nut-server', '?')} / {m.get('nut-client', '?')} |",
        f"| mosquitto | {m.get('mosquitto', '?')} |",
    ]
    for name, data in (("detection_latency", det), ("poll_capacity", cap)):
        if data:
            dm = data["machine"]
            lines.append(f"| {name} run | {dm['date']}, load average {dm['loadavg']} at start |")
    return [*lines, ""]


#: What the upsd part measures from and to.
UPSD_START = (
    "Start: the rename of the dummy-ups `.dev` file (new whole-second mtime, "
    "`pollinterval = 1`). End: upsmon's NOTIFYCMD writing `date +%s.%N` (ONBATT/ONLINE), "
    "or the paho subscriber receiving `power.on_battery`/`power.on_line` on "
    "`facility/<site>/events` (the agent runs in its own process and publishes through "
    "a private mosquitto). `upsd floor` is when upsd itself answers the new `ups.status` "
    "(a `GET VAR` every 20 ms): the part every client pays for dummy-ups' file polling. "
    "Both upsmon instances run as secondaries (`-F -p`, as root), each under "
    "`unshare -m` with a private `/run/nut`: upsmon 2.8.0 keeps its PID file there and "
    "refuses a second instance. Their notification time includes the fork of "
    "NOTIFYCMD, as the agent's includes MQTT."
)

#: What the simulator part measures from and to.
SIM_START = (
    "Start: `RunningSimulator.inject('utility.fail')` / `('utility.restore')` in the "
    "benchmark process. The bench site feeds its UPS straight from the utility (no "
    "generator, no ATS), so the UPS is on battery, and back on line, at the instant "
    "of the injection: with the bundled site, `generator.crank_fail` + `utility.fail` "
    "gives the same OB, but the ATS's 2 s `transfer_delay` would be counted in every "
    "on-line transition. The simulator answers at once (no file polling), so this is "
    "the agent's own share: its poll interval, the poll, the event, MQTT."
)


def latency_part(title: str, start: str, block: dict[str, Any]) -> list[str]:
    """One peer's part of the detection section: what its start instant is, then its table."""
    return [f"### {title}", "", start, "", *latency_table(block), ""]


def latency_table(block: dict[str, Any]) -> list[str]:
    lines = [
        "| observer | n | median ms | p95 ms | max ms | OB median | OL median | missed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in block.items():
        if name.startswith("_"):
            continue
        a = r["all"]
        lines.append(
            f"| {name} | {a['n']} | {ms(a['median'])} | {ms(a['p95'])} | {ms(a['max'])} "
            f"| {ms(r['OB']['median'])} | {ms(r['OL']['median'])} | {r['missed']} |"
        )
    return lines


def med(block: dict[str, Any], prefix: str, key: str = "median") -> float:
    for name, r in block.items():
        if name.startswith(prefix):
            return float(r["all"][key])
    return float("nan")


def detection_section(det: dict[str, Any]) -> list[str]:
    out = ["## Detection latency (`bench/detection_latency.py`)", ""]
    out += [
        "From the instant a UPS changes state to the instant a monitor reports it. Every observer "
        "runs at the same time and sees the same transitions, interleaved OL -> OB -> OL. After "
        "the slowest observer has reported, a random pause as long as the longest poll period "
        "(0.3-5.3 s against upsd, whose slowest observer polls every 5 s; 0.2-1.2 s against "
        "the simulator) spreads the next change evenly over every poll cycle.",
        "",
    ]
    if "upsd" in det:
        u = det["upsd"]
        n = det["transitions"]
        out += latency_part(
            f"Real upsd + dummy-ups ({n} OB + {n} OL)",
            UPSD_START,
            u,
        )
        floor = med(u, "upsd floor")
        mon5, mon1 = med(u, "upsmon POLLFREQ 5"), med(u, "upsmon POLLFREQ 1")
        ag1, ag025 = med(u, "facility-agent interval 1 s"), med(u, "facility-agent interval 0.25")
        p95 = {k: med(u, k, "p95") for k in ("upsmon POLLFREQ 5", "facility-agent interval 1 s")}
        out += [
            "Reading:",
            "",
            f"- Defaults against defaults: upsmon (POLLFREQ 5) needs {ratio(mon5, ag1)} the "
            f"agent's median (interval 1 s): {ms(mon5)} ms vs {ms(ag1)} ms; at p95 "
            f"{ms(p95['upsmon POLLFREQ 5'])} ms vs {ms(p95['facility-agent interval 1 s'])} ms.",
            f"- Tuned: upsmon at POLLFREQ 1 is {ms(mon1)} ms, the agent at 0.25 s "
            f"{ms(ag025)} ms ({ratio(mon1, ag025)}).",
            f"- Above the upsd floor ({ms(floor)} ms, dummy-ups re-reading its file once a "
            f"second), the agent at 0.25 s adds {ms(ag025 - floor)} ms in the median, at 1 s "
            f"{ms(ag1 - floor)} ms; upsmon adds {ms(mon1 - floor)} ms (POLLFREQ 1) and "
            f"{ms(mon5 - floor)} ms (POLLFREQ 5). Half the polling interval is the expected "
            "share of a poller.",
        ]
        notes = u.get("_notes", {})
        if notes:
            called = notes.get("upsmon_shutdowncmd_called")
            out.append(f"- upsmon's SHUTDOWNCMD was called: {'yes' if called else 'no'}.")
        out.append("")
    if "sim" in det:
        s = det["sim"]
        n = det.get("sim_transitions", "?")
        out += latency_part(
            f"The agent against our NUT simulator ({n} OB + {n} OL)",
            SIM_START,
            s,
        )
        floor = med(s, "simulator floor")
        ag1, ag025 = med(s, "facility-agent interval 1 s"), med(s, "facility-agent interval 0.25")
        out += [
            "Reading:",
            "",
            f"- Median {ms(ag1)} ms at interval 1 s and {ms(ag025)} ms at 0.25 s "
            f"({ratio(ag1, ag025)}). A change waits on average half the interval for the next "
            f"poll (500 and 125 ms); the medians differ from that by {ms(ag1 - 0.5)} and "
            f"{ms(ag025 - 0.125)} ms, within the noise of where the changes fall in the poll "
            "cycle: the poll, the event and MQTT cost little next to the interval (the simulator "
            f"answers a `GET VAR` in {ms(floor)} ms).",
            "",
        ]
    return out


def cap_table(rows: list[dict[str, Any]], agent_rows: bool) -> list[str]:
    lines = [
        "| N | client | polls/s | client CPU us/poll | wall ms/poll | server CPU us/poll |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["tool"].startswith("agent @") != agent_rows:
            continue
        server = r.get("server_cpu_per_poll_us")
        lines.append(
            f"| {r['n']} | {r['tool']} | {num(r['polls_per_s'], '.1f')} "
            f"| {num(r['cpu_per_poll_us'])} | {num(r['wall_per_poll_ms'], '.2f')} "
            f"| {num(server)} |"
        )
    return lines


def pick(rows: list[dict[str, Any]], n: int, prefix: str) -> dict[str, Any]:
    for r in rows:
        if r["n"] == n and r["tool"].startswith(prefix):
            return r
    return {"polls_per_s": float("nan"), "cpu_per_poll_us": float("nan"), "client_cpu_share": 0}


def capacity_section(cap: dict[str, Any]) -> list[str]:
    sim, upsd = cap.get("simulator", []), cap.get("upsd", [])
    out = [
        "## Poll capacity (`bench/poll_capacity.py`)",
        "",
        f"`LIST VAR` (one full listing of a UPS) as fast as each client goes, {cap['seconds']:g} s "
        "per measurement after a warm-up. The client runs in a process of its own (CPU = "
        "`time.process_time` of that process, or `getrusage(RUSAGE_CHILDREN)` for the upsc "
        "processes), the server in another (its CPU from /proc, minus its idle rate: the "
        "simulator steps its model 10 times a second). `agent driver` = N NutDriver instances "
        "sharing one pooled connection, polled concurrently as the agent's pollers do; each poll "
        "also builds the Sample (status flags, numbers converted). `plain asyncio` = one "
        "connection, `LIST VAR` + `readuntil(END LIST VAR)`, no socket options. The server's "
        "CPU is counted in 10 ms clock ticks: at ~20 polls/s over a few seconds a figure is "
        "only good to some 100 us per poll.",
        "",
        "### Against the simulator (`facility-agent simulate`, a site of N UPS units)",
        "",
        *cap_table(sim, agent_rows=False),
        "",
        "The whole Agent with N devices at its default interval of 1 s (pollers, site state, "
        f"no sink: states do not change, so an MQTT sink would only send heartbeats), "
        f"{2 * cap['seconds']:g} s:",
        "",
        "| N | polls/s | agent CPU us/poll | share of one core |",
        "|---:|---:|---:|---:|",
    ]
    for r in sim:
        if r["tool"].startswith("agent @"):
            out.append(
                f"| {r['n']} | {num(r['polls_per_s'], '.1f')} | {num(r['cpu_per_poll_us'])} "
                f"| {100 * r['client_cpu_share']:.1f} % |"
            )
    out += ["", "### Against real upsd + dummy-ups (N = 2)", "", *cap_table(upsd, False), ""]
    sizes = sorted({r["n"] for r in sim})
    top = sizes[-1] if sizes else 0
    d_u, p_u, c_u = (pick(upsd, 2, p) for p in ("agent driver", "plain", "upsc"))
    d_s, p_s, c_s = (pick(sim, top, p) for p in ("agent driver", "plain", "upsc"))
    a_top = pick(sim, top, "agent @")
    out += [
        "Reading:",
        "",
        f"- Real upsd: the agent's client does {ratio(d_u['polls_per_s'], p_u['polls_per_s'])} "
        f"the polls/s of a plain asyncio client ({num(d_u['polls_per_s'])} vs "
        f"{num(p_u['polls_per_s'], '.1f')}/s) and {ratio(d_u['polls_per_s'], c_u['polls_per_s'])} "
        f"those of upsc ({num(c_u['polls_per_s'], '.1f')}/s). upsd writes a listing one line per "
        "write() and Nagle holds each next line until the client's delayed ACK (~40 ms): that "
        "caps the plain client and upsc; re-arming TCP_QUICKACK after every read removes it.",
        "- The simulator sends each reply in one write, so there the plain client does not stall; "
        f"at N = {top} it runs at {num(p_s['polls_per_s'])}/s with "
        f"{num(p_s['cpu_per_poll_us'])} us CPU/poll, the agent driver at "
        f"{num(d_s['polls_per_s'])}/s with {num(d_s['cpu_per_poll_us'])} us/poll "
        f"({ratio(d_s['cpu_per_poll_us'], p_s['cpu_per_poll_us'])} the CPU): the difference is the "
        "work a raw read skips (not profiled here: a TCP_QUICKACK setsockopt per chunk read, "
        "every line parsed and checked, numbers converted, a Sample built, the per-request lock "
        "and deadline).",
        f"- upsc costs {ratio(c_s['cpu_per_poll_us'], d_s['cpu_per_poll_us'])} the agent "
        f"driver's CPU per poll at N = {top} ({num(c_s['cpu_per_poll_us'])} us: a process start "
        "per listing).",
        f"- At N = {top} UPS units polled every second, the whole agent used "
        f"{100 * a_top['client_cpu_share']:.1f} % of one core "
        f"({num(a_top['cpu_per_poll_us'])} us per poll).",
        "",
    ]
    return out


def main() -> int:
    det, cap = load("detection_latency"), load("poll_capacity")
    if det is None and cap is None:
        print("no results in bench/out: run bench/run_all.sh first", file=sys.stderr)
        return 1
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/write_docs.py` from the JSON results of `bench/run_all.sh`; "
        "do not edit by hand. Loopback only, on a shared, noisy 2-core machine: read the "
        "ratios between tools measured side by side in the same run, not the absolute numbers. "
        "How to rerun and what each script measures: `bench/README.md`.",
        "",
        *machine_section(det, cap),
    ]
    if det:
        lines += detection_section(det)
    if cap:
        lines += capacity_section(cap)
    lines += [
        "## Not measured",
        "",
        "- upsmon's own CPU, and detection through a real UPS driver (USB/serial): the "
        "driver's own polling adds to every client alike, as dummy-ups does here.",
        "- upsmon against the simulator: it would only add the simulator's ~10 ms floor to "
        "its POLLFREQ; the upsd run already compares it with the agent on equal terms.",
        "- Many agents or many upsd servers at once; TLS to the broker or to upsd.",
        "",
    ]
    DOC.parent.mkdir(exist_ok=True)
    # Sections other benchmarks write between `<!-- name:start -->` / `<!-- name:end -->`
    # markers (bench/modbus_rtu.py ...) are kept, after the NUT part.
    old = DOC.read_text() if DOC.exists() else ""
    marked = r"(?s)<!-- ([a-z0-9_-]+):start -->.*?<!-- \1:end -->"
    kept = [m.group(0) for m in re.finditer(marked, old)]
    DOC.write_text("\n".join(lines) + "".join(f"\n{k}\n" for k in kept))
    print(f"written {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
