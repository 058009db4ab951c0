"""Poll capacity: `LIST VAR` polls per second and CPU per poll, for N UPS units on one monitor.

Against our NUT simulator (`facility-agent simulate` in its own process, a site with N UPS
units), for N = 1, 10, 50, 200:

* `agent driver`: N NutDriver instances (one pooled connection, as in the agent), polled back
  to back in a process that runs nothing else: the most polls/s the driver sustains, and its
  CPU per poll (`time.process_time` / polls);
* `plain asyncio`: a minimal asyncio client (one connection, no TCP_QUICKACK), same way;
* `upsc`: one `upsc ups@host:port` process per full listing, run one after the other: wall and
  CPU per poll (`getrusage(RUSAGE_CHILDREN)`);
* `agent @1 s`: the whole Agent (pollers + site state, no sink) with N devices at interval 1 s:
  its CPU per poll and share of one core at the rate it really runs.

Against real upsd with dummy-ups for N = 2: the agent's driver (TCP_QUICKACK re-armed after
every read) vs upsc vs the plain asyncio client, which stalls at ~22 polls/s because upsd writes
one line per write() and Nagle waits for the client's delayed ACK.

The server's CPU per poll (simulator or upsd, from /proc, minus its idle rate) is given too.
Each measurement lasts a few seconds; the whole run takes about two minutes.

Usage: .venv/bin/python bench/poll_capacity.py [--seconds 3] [--sizes 1,10,50,200]
Writes bench/out/poll_capacity.json (docs: bench/write_docs.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    PYTHON,
    REPO,
    DummyUpsd,
    Proc,
    bench_site_yaml,
    free_port,
    machine_info,
    proc_cpu_seconds,
    require,
    save_result,
    wait_until,
)

# --------------------------------------------------------------------------------------------
# Client side (runs in a child process: `poll_capacity.py client ...`)
# --------------------------------------------------------------------------------------------


async def _driver_loop(port: int, names: list[str], seconds: float, warmup: float) -> None:
    from facility_agent.core.registry import driver_class

    cls = driver_class("nut")
    drivers = [
        cls(
            cls.config_model.model_validate(
                {"id": f"d{i}", "driver": "nut", "host": "127.0.0.1", "port": port, "ups": n}
            )
        )
        for i, n in enumerate(names)
    ]

    async def round_() -> int:
        samples = await asyncio.gather(*(d.poll() for d in drivers))
        assert all(s.status for s in samples), "a poll without ups.status"
        return len(samples)

    await _measure(round_, seconds, warmup)
    for d in drivers:
        await d.close()


async def _plain_loop(port: int, names: list[str], seconds: float, warmup: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def round_() -> int:
        for n in names:
            writer.write(f"LIST VAR {n}\n".encode())
            data = await reader.readuntil(f"END LIST VAR {n}\n".encode())
            assert b"ups.status" in data
        return len(names)

    await _measure(round_, seconds, warmup)
    writer.write(b"LOGOUT\n")
    writer.close()


async def _measure(round_: Any, seconds: float, warmup: float) -> None:
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        await round_()
    print("START", flush=True)
    polls = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        polls += await round_()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    print(json.dumps({"polls": polls, "cpu": cpu, "wall": wall}), flush=True)


def client_main(args: argparse.Namespace) -> None:
    names = args.ups.split(",")
    loop = _driver_loop if args.kind == "driver" else _plain_loop
    asyncio.run(loop(args.port, names, args.seconds, args.warmup))


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def _read_line(proc: Proc, timeout: float) -> str:
    assert proc.popen.stdout is not None
    ready, _, _ = select.select([proc.popen.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no output from {proc.argv[:3]} in {timeout} s: {proc.output()[-800:]}")
    return proc.popen.stdout.readline().decode().strip()


def idle_rate(server_pid: int, seconds: float = 1.0) -> float:
    """CPU seconds per second the server burns with no client (the simulator ticks its model)."""
    c0 = proc_cpu_seconds(server_pid)
    time.sleep(seconds)
    return (proc_cpu_seconds(server_pid) - c0) / seconds


def row(
    tool: str, polls: int, cpu: float, wall: float, server_cpu: float | None, idle: float
) -> dict[str, Any]:
    r: dict[str, Any] = {
        "tool": tool,
        "polls": polls,
        "wall_s": wall,
        "polls_per_s": polls / wall if wall else 0.0,
        "cpu_per_poll_us": 1e6 * cpu / polls if polls else float("nan"),
        "wall_per_poll_ms": 1e3 * wall / polls if polls else float("nan"),
        "client_cpu_share": cpu / wall if wall else 0.0,
    }
    if server_cpu is not None and polls:
        r["server_cpu_per_poll_us"] = 1e6 * max(0.0, server_cpu - idle * wall) / polls
    return r


def run_client(
    root: Path,
    kind: str,
    port: int,
    names: list[str],
    seconds: float,
    server_pid: int,
    idle: float,
) -> dict[str, Any]:
    proc = Proc(
        [
            PYTHON,
            str(Path(__file__).resolve()),
            "client",
            "--kind",
            kind,
            "--port",
            str(port),
            "--ups",
            ",".join(names),
            "--seconds",
            str(seconds),
        ],
        root / f"client-{kind}-{len(names)}.log",
        stdout_pipe=True,
    )
    try:
        if _read_line(proc, 30) != "START":
            raise RuntimeError(proc.output()[-800:])
        s0 = proc_cpu_seconds(server_pid)
        data = json.loads(_read_line(proc, seconds + 30))
        s1 = proc_cpu_seconds(server_pid)
    finally:
        proc.stop()
    label = "agent driver" if kind == "driver" else "plain asyncio (no QUICKACK)"
    return row(label, data["polls"], data["cpu"], data["wall"], s1 - s0, idle)


def run_upsc(
    port: int, names: list[str], seconds: float, server_pid: int, idle: float
) -> dict[str, Any]:
    upsc = require("upsc")
    polls = 0
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = proc_cpu_seconds(server_pid)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for n in names:
            out = subprocess.run(
                [upsc, f"{n}@127.0.0.1:{port}"], capture_output=True, text=True, timeout=10
            )
            if "ups.status" not in out.stdout:
                raise RuntimeError(f"upsc {n}: {out.stdout[-300:]} {out.stderr[-300:]}")
            polls += 1
            if time.perf_counter() - t0 >= seconds:
                break
    wall = time.perf_counter() - t0
    s1 = proc_cpu_seconds(server_pid)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return row("upsc (one process per listing)", polls, cpu, wall, s1 - s0, idle)


def run_agent(
    root: Path, port: int, names: list[str], seconds: float, server_pid: int, idle: float
) -> dict[str, Any]:
    proc = Proc(
        [
            PYTHON,
            str(BENCH_DIR / "_agent_child.py"),
            "--site",
            "capacity",
            "--nut-port",
            str(port),
            "--ups",
            ",".join(names),
            "--interval",
            "1",
            "--seconds",
            str(seconds),
            "--warmup",
            "1.5",
        ],
        root / f"agent-{len(names)}.log",
        stdout_pipe=True,
    )
    try:
        if _read_line(proc, 30) != "READY":
            raise RuntimeError(proc.output()[-800:])
        time.sleep(1.5)
        s0 = proc_cpu_seconds(server_pid)
        data = json.loads(_read_line(proc, seconds + 30))
        s1 = proc_cpu_seconds(server_pid)
    finally:
        proc.stop()
    label = "agent @1 s (whole Agent, no sink)"
    return row(label, data["polls"], data["cpu"], data["wall"], s1 - s0, idle)


def bench_simulator(root: Path, n: int, seconds: float) -> list[dict[str, Any]]:
    names = [f"ups-{i:03d}" for i in range(1, n + 1)]
    site = root / f"site-{n}.yaml"
    site.write_text(bench_site_yaml(names))
    port = free_port()
    sim = Proc(
        [
            str(Path(PYTHON).parent / "facility-agent"),
            "simulate",
            "--site",
            str(site),
            "--nut-port",
            str(port),
        ],
        root / f"sim-{n}.log",
        cwd=REPO,
    )
    rows: list[dict[str, Any]] = []
    try:
        wait_until(
            lambda: (
                "ups.status"
                in subprocess.run(
                    ["upsc", f"{names[0]}@127.0.0.1:{port}"], capture_output=True, text=True
                ).stdout
            ),
            20,
            "simulator",
        )
        idle = idle_rate(sim.pid)
        rows.append(run_client(root, "driver", port, names, seconds, sim.pid, idle))
        rows.append(run_client(root, "plain", port, names, seconds, sim.pid, idle))
        rows.append(run_upsc(port, names, seconds, sim.pid, idle))
        rows.append(run_agent(root, port, names, 2 * seconds, sim.pid, idle))
    finally:
        sim.stop()
    for r in rows:
        r["n"] = n
        r["server_idle_cpu_share"] = idle
    return rows


def bench_upsd(root: Path, seconds: float) -> list[dict[str, Any]]:
    names = ["ups1", "ups2"]
    nut = DummyUpsd(root / "nut", tuple(names))
    nut.start()
    rows: list[dict[str, Any]] = []
    try:
        upsd_pid = nut.upsd_pid
        idle = idle_rate(upsd_pid)
        rows.append(run_client(root, "driver", nut.port, names, seconds, upsd_pid, idle))
        rows.append(run_client(root, "plain", nut.port, names, seconds, upsd_pid, idle))
        rows.append(run_upsc(nut.port, names, seconds, upsd_pid, idle))
    finally:
        nut.stop()
    for r in rows:
        r["n"] = len(names)
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        server = r.get("server_cpu_per_poll_us", float("nan"))
        print(
            f"  N={r['n']:3d} {r['tool']:36s} {r['polls_per_s']:8.1f} polls/s "
            f"{r['cpu_per_poll_us']:8.0f} us CPU/poll  server {server:6.0f} us/poll"
        )


def main(args: argparse.Namespace) -> None:
    result: dict[str, Any] = {"machine": machine_info(), "seconds": args.seconds}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        root = Path(tmp)
        sim_rows: list[dict[str, Any]] = []
        for n in [int(x) for x in args.sizes.split(",")]:
            rows = bench_simulator(root, n, args.seconds)
            print_rows(rows)
            sim_rows += rows
        result["simulator"] = sim_rows
        print("real upsd + 2 dummy-ups:")
        upsd_rows = bench_upsd(root, args.seconds)
        print_rows(upsd_rows)
        result["upsd"] = upsd_rows
    result["total_s"] = time.perf_counter() - started
    print(f"written {save_result('poll_capacity', result)} in {result['total_s']:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    c = sub.add_parser("client", help="(internal) the measured client process")
    c.add_argument("--kind", choices=("driver", "plain"), required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--ups", required=True)
    c.add_argument("--seconds", type=float, default=3.0)
    c.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    parser.add_argument("--sizes", default="1,10,50,200", help="numbers of simulated UPS units")
    a = parser.parse_args()
    if a.cmd == "client":
        client_main(a)
    else:
        main(a)
