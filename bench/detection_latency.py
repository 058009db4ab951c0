"""Detection latency: a UPS state change -> the moment a monitor reports it.

Part 1, real upsd: one dummy-ups UPS behind /lib/nut/upsd. The benchmark rewrites its `.dev`
file (temp + rename, new whole-second mtime) OL -> OB -> OL ... and measures, from the rename
(wall clock), when each observer reports the change. All observers run at the same time against
the same upsd, so every one of them sees the same transitions:

* `upsd floor`: a client asking `GET VAR ups1 ups.status` every 20 ms: when upsd itself has the
  new status (dummy-ups re-reads its file every `pollinterval = 1` s). Nobody can beat this.
* NUT's own `upsmon` (foreground, privileged, secondary) with a NOTIFYCMD that appends the epoch
  time and NOTIFYTYPE (ONBATT / ONLINE) to a file: default POLLFREQ 5 and tuned POLLFREQ 1
  (POLLFREQALERT the same). It never shuts anything down: SHUTDOWNCMD only writes a file.
* facility-agent (`Agent`, each in its own process) publishing to a private mosquitto; a paho
  subscriber on `facility/<site>/events` notes when `power.on_battery` / `power.on_line`
  arrives: device interval 1 s (default) and 0.25 s.

Part 2, our NUT simulator (RunningSimulator in this process, a site whose UPS is fed straight
from the utility): `utility.fail` / `utility.restore` injected, agents at 1 s and 0.25 s. Without
dummy-ups' file polling this shows the agent's own share.

Usage: .venv/bin/python bench/detection_latency.py [--transitions 10] [--sim-transitions 10]
Writes bench/out/detection_latency.json (docs: bench/write_docs.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import select
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _common import (
    BENCH_DIR,
    MONITOR_USER,
    PYTHON,
    UPSMON,
    DummyUpsd,
    Proc,
    bench_site_yaml,
    machine_info,
    require,
    save_result,
    summary,
)
from paho.mqtt.enums import CallbackAPIVersion

from facility_agent.drivers.nut.client import NutClient
from facility_agent.simulators.serve import RunningSimulator, SimulatorOptions
from facility_agent.tools.local_broker import LocalMosquitto

EVENT_KIND = {"power.on_battery": "OB", "power.on_line": "OL"}
NOTIFY_KIND = {"ONBATT": "OB", "ONLINE": "OL"}
WAIT_TIMEOUT = 15.0


@dataclass
class Observer:
    """Something that reports OB/OL changes: a list of (epoch time, "OB"|"OL") it saw."""

    name: str
    seen: list[tuple[float, str]] = field(default_factory=list)
    cursor: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"OB": [], "OL": []})
    missed: int = 0

    def find(self, kind: str, since: float) -> float | None:
        """The first report of `kind` at or after `since` not matched before."""
        for i in range(self.cursor, len(self.seen)):
            t, k = self.seen[i]
            if k == kind and t >= since:
                self.cursor = i + 1
                return t
        return None


class EventSubscriber:
    """paho subscriber on facility/+/events: maps each site to an Observer."""

    def __init__(self, port: int, observers: dict[str, Observer]) -> None:
        self.observers = observers
        self.states: dict[str, list[str]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.port = port

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([("facility/+/events", 1), ("facility/+/+/state", 1)])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        parts = msg.topic.split("/")
        site = parts[1]
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        if parts[-1] == "events":
            kind = EVENT_KIND.get(data.get("type", ""))
            obs = self.observers.get(site)
            if kind and obs is not None:
                obs.seen.append((now, kind))
        elif parts[-1] == "state":
            self.states[site] = list(data.get("status", []))

    def start(self) -> None:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_agent(
    root: Path, site: str, nut_port: int, broker_port: int, interval: float, ups: str
) -> Proc:
    proc = Proc(
        [
            PYTHON,
            str(BENCH_DIR / "_agent_child.py"),
            "--site",
            site,
            "--nut-port",
            str(nut_port),
            "--broker-port",
            str(broker_port),
            "--ups",
            ups,
            "--interval",
            str(interval),
        ],
        root / f"agent-{site}.log",
        stdout_pipe=True,
    )
    assert proc.popen.stdout is not None
    ready, _, _ = select.select([proc.popen.stdout], [], [], 20)
    line = proc.popen.stdout.readline().decode().strip() if ready else ""
    if line != "READY":
        proc.stop()
        raise RuntimeError(f"agent {site} did not start: {proc.output()[-1000:]}")
    return proc


def start_upsmon(root: Path, name: str, nut_port: int, pollfreq: int) -> tuple[Proc, Path]:
    """upsmon in the foreground as root, with its own config dir; returns (proc, notify log)."""
    d = root / name
    d.mkdir()
    notify_log = d / "notify.log"
    script = d / "notify.sh"
    script.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $NOTIFYTYPE $UPSNAME" >> {notify_log}\n')
    script.chmod(0o755)
    quiet = ["LOWBATT", "FSD", "COMMOK", "COMMBAD", "SHUTDOWN", "REPLBATT", "NOCOMM"]
    quiet += ["NOPARENT", "CAL"]  # the only other types upsmon 2.8.0 knows (no WALL spam)
    conf = d / "upsmon.conf"
    conf.write_text(
        "RUN_AS_USER root\n"
        f"MONITOR ups1@127.0.0.1:{nut_port} 1 {MONITOR_USER[0]} {MONITOR_USER[1]} secondary\n"
        "MINSUPPLIES 1\n"
        # Never shuts anything down: the command only leaves a trace in the scratch dir.
        f"SHUTDOWNCMD \"/bin/sh -c 'date >> {d / 'shutdown-called'}'\"\n"
        f"NOTIFYCMD {script}\n"
        f"POLLFREQ {pollfreq}\n"
        f"POLLFREQALERT {pollfreq}\n"
        "HOSTSYNC 15\nDEADTIME 15\nFINALDELAY 0\nRBWARNTIME 43200\nNOCOMMWARNTIME 300\n"
        f"POWERDOWNFLAG {d / 'killpower'}\n"
        "NOTIFYFLAG ONBATT SYSLOG+EXEC\nNOTIFYFLAG ONLINE SYSLOG+EXEC\n"
        + "".join(f"NOTIFYFLAG {t} IGNORE\n" for t in quiet)
    )
    conf.chmod(0o600)
    env = {"NUT_CONFPATH": str(d), "NUT_STATEPATH": str(d), "NUT_ALTPIDPATH": str(d)}
    # upsmon 2.8.0 keeps its PID file at the compiled-in /run/nut/upsmon.pid (no environment
    # override) and refuses to start while that PID lives: each instance gets its own mount
    # namespace with a private tmpfs on /run/nut, which also leaves the host's /run/nut alone.
    # `unshare` and `sh` exec, so the PID we hold is upsmon's own.
    shell = 'mkdir -p /run/nut && mount -t tmpfs -o size=1m tmpfs /run/nut && exec "$0" -F -p'
    argv = [require("unshare"), "-m", "sh", "-c", shell, UPSMON]
    proc = Proc(argv, d / "upsmon.log", cwd=d, env=env)
    return proc, notify_log


def read_notify(path: Path, obs: Observer) -> None:
    if not path.exists():
        return
    seen: list[tuple[float, str]] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in NOTIFY_KIND:
            seen.append((float(parts[0]), NOTIFY_KIND[parts[1]]))
    obs.seen = seen


def numlogins(port: int, ups: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"GET NUMLOGINS {ups}\n".encode())
        reply = s.recv(256).decode().split()
    return int(reply[2]) if len(reply) == 3 and reply[0] == "NUMLOGINS" else -1


async def floor_watch(port: int, ups: str, obs: Observer, stop: asyncio.Event) -> None:
    """When upsd itself reports the new status (GET VAR every 20 ms)."""
    client = NutClient("127.0.0.1", port, timeout=2)
    last = ""
    try:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                status = await client.get_var(ups, "ups.status")
                now = time.time()
                flag = "OB" if "OB" in status.split() else "OL" if "OL" in status.split() else ""
                if flag and flag != last:
                    if last:
                        obs.seen.append((now, flag))
                    last = flag
            await asyncio.sleep(0.02)
    finally:
        await client.close()


async def wait_all(
    observers: list[Observer],
    kind: str,
    t0: float,
    refresh: Any = None,
    timeout: float = WAIT_TIMEOUT,
) -> None:
    pending = list(observers)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        if refresh is not None:
            refresh()
        for obs in list(pending):
            t = obs.find(kind, t0)
            if t is not None:
                obs.latencies[kind].append(t - t0)
                pending.remove(obs)
        await asyncio.sleep(0.01)
    for obs in pending:
        obs.missed += 1
        print(f"  {obs.name}: no {kind} report within {timeout} s", file=sys.stderr)


def report(observers: list[Observer]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for obs in observers:
        both = obs.latencies["OB"] + obs.latencies["OL"]
        out[obs.name] = {
            "OB": summary(obs.latencies["OB"]),
            "OL": summary(obs.latencies["OL"]),
            "all": summary(both),
            "missed": obs.missed,
            "raw": {k: [round(v, 4) for v in vs] for k, vs in obs.latencies.items()},
        }
        s = out[obs.name]["all"]
        print(
            f"  {obs.name:34s} n={s['n']:3d} median={s['median']:.3f}s "
            f"p95={s['p95']:.3f}s max={s['max']:.3f}s missed={obs.missed}"
        )
    return out


async def run_upsd(root: Path, broker: LocalMosquitto, transitions: int) -> dict[str, Any]:
    require(UPSMON)
    nut = DummyUpsd(root / "nut", ("ups1",))
    nut.start()
    procs: list[Proc] = []
    floor = Observer("upsd floor (GET VAR every 20 ms)")
    mon5 = Observer("upsmon POLLFREQ 5 (default)")
    mon1 = Observer("upsmon POLLFREQ 1")
    ag1 = Observer("facility-agent interval 1 s (default)")
    ag025 = Observer("facility-agent interval 0.25 s")
    sub = EventSubscriber(broker.port, {"upsd-1s": ag1, "upsd-250ms": ag025})
    stop = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    try:
        sub.start()
        procs.append(start_agent(root, "upsd-1s", nut.port, broker.port, 1.0, "ups1"))
        procs.append(start_agent(root, "upsd-250ms", nut.port, broker.port, 0.25, "ups1"))
        p5, log5 = start_upsmon(root, "upsmon-5", nut.port, 5)
        p1, log1 = start_upsmon(root, "upsmon-1", nut.port, 1)
        procs += [p5, p1]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ok_agents = all(sub.states.get(s) for s in ("upsd-1s", "upsd-250ms"))
            if ok_agents and numlogins(nut.port, "ups1") >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(
                f"monitors not ready: states {sub.states}, upsmon logs: "
                f"{p5.output()[-500:]} {p1.output()[-500:]}"
            )
        watcher = asyncio.create_task(floor_watch(nut.port, "ups1", floor, stop))
        await asyncio.sleep(5.5)  # let upsmon POLLFREQ 5 complete a first poll of OL

        def refresh() -> None:
            read_notify(log5, mon5)
            read_notify(log1, mon1)

        observers = [floor, mon5, mon1, ag1, ag025]
        rng = random.Random()
        for i in range(2 * transitions):
            kind = "OB" if i % 2 == 0 else "OL"
            t0 = nut.set_status("ups1", kind)
            await wait_all(observers, kind, t0, refresh)
            print(f"  transition {i + 1}/{2 * transitions} -> {kind}", file=sys.stderr)
            # We waited for the slowest observer, so every poll schedule is now in a known
            # phase: a random pause as long as the longest poll period (upsmon's POLLFREQ 5)
            # spreads the next change evenly over every observer's cycle.
            await asyncio.sleep(rng.uniform(0.3, 5.3))
        shutdown_called = any(
            (root / d / "shutdown-called").exists() for d in ("upsmon-5", "upsmon-1")
        )
        result = report(observers)
        result["_notes"] = {"upsmon_shutdowncmd_called": shutdown_called}
        return result
    finally:
        stop.set()
        if watcher is not None:
            await watcher
        for p in reversed(procs):
            p.stop()
        sub.stop()
        nut.stop()


async def run_sim(root: Path, broker: LocalMosquitto, transitions: int) -> dict[str, Any]:
    site_file = root / "bench-site.yaml"
    site_file.write_text(bench_site_yaml(["ups1"]))
    ag1 = Observer("facility-agent interval 1 s (default)")
    ag025 = Observer("facility-agent interval 0.25 s")
    floor = Observer("simulator floor (GET VAR every 20 ms)")
    sub = EventSubscriber(broker.port, {"sim-1s": ag1, "sim-250ms": ag025})
    procs: list[Proc] = []
    stop = asyncio.Event()
    async with RunningSimulator(SimulatorOptions(site_file=site_file, nut_port=0)) as sim:
        watcher = asyncio.create_task(floor_watch(sim.nut_port, "ups1", floor, stop))
        try:
            sub.start()
            # Start the agents in a thread: the simulator must keep serving while they start.
            for site, interval in (("sim-1s", 1.0), ("sim-250ms", 0.25)):
                procs.append(
                    await asyncio.to_thread(
                        start_agent, root, site, sim.nut_port, broker.port, interval, "ups1"
                    )
                )
            deadline = time.monotonic() + 20
            while not all(sub.states.get(s) for s in ("sim-1s", "sim-250ms")):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"agents not ready: {sub.states}")
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            rng = random.Random()
            observers = [floor, ag1, ag025]
            for i in range(2 * transitions):
                kind = "OB" if i % 2 == 0 else "OL"
                sim.inject("utility.fail" if kind == "OB" else "utility.restore")
                t0 = time.time()
                await wait_all(observers, kind, t0)
                await asyncio.sleep(rng.uniform(0.2, 1.2))
            return report(observers)
        finally:
            stop.set()
            await watcher
            for p in reversed(procs):
                await asyncio.to_thread(p.stop)
            sub.stop()


async def main(args: argparse.Namespace) -> None:
    result: dict[str, Any] = {"machine": machine_info(), "transitions": args.transitions}
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        root = Path(tmp)
        broker = LocalMosquitto()
        await broker.start()
        try:
            if args.transitions:
                print(f"real upsd + dummy-ups, {args.transitions} OB + {args.transitions} OL:")
                result["upsd"] = await run_upsd(root, broker, args.transitions)
            if args.sim_transitions:
                print(f"simulator, {args.sim_transitions} OB + {args.sim_transitions} OL:")
                (root / "sim").mkdir()
                result["sim"] = await run_sim(root / "sim", broker, args.sim_transitions)
                result["sim_transitions"] = args.sim_transitions
        finally:
            await broker.stop()
    print(f"written {save_result('detection_latency', result)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transitions", type=int, default=10, help="OB+OL pairs on real upsd")
    parser.add_argument("--sim-transitions", type=int, default=10, help="pairs on the simulator")
    asyncio.run(main(parser.parse_args()))
