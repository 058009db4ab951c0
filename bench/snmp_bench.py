"""SNMP benchmark: polls per second and CPU per poll, side by side, in one run.

- 10-object GET: our v1/v2c client (snmp_client.FastClient), a full driver poll of a 10-metric
  profile, pysnmp's hlapi at its fastest (engine and target reused, lookupMib=False), the same
  through SNMPv3 authPriv, and net-snmp's snmpget (one process per GET);
- 48-outlet PDU walk: a driver poll of the apc-rpdu2 profile (GETBULK) and net-snmp's
  snmpbulkwalk of the same outlet table;
- collectd's snmp plugin (Debian collectd-core) polling the same 10 objects (one GET, a custom
  10-value type) and the same outlet table, to CSV: at its maximum rate (one host, Interval
  0.0001 s: its read loop runs back to back) and at a fixed rate (20 hosts every 0.1 s = 200
  GETs/s, 10 hosts every 1 s = 10 walks/s), with our driver under its real poller
  (DevicePoller) at the same fixed rate; collectd's CPU from /proc/<pid>/stat over the
  window, its polls counted from the CSV lines written in the window (and, on snmpd, the
  requests per poll from snmpd's snmpInPkts counter);
- against our simulator (its own process) and net-snmp snmpd (pass_persist tables) at once;
- trap -> event latency through the agent's trap listener, and trap -> event on a real
  Mosquitto through the whole agent (bench/snmp_trap_mqtt.py).

CPU per poll is this process's CPU time (or, for snmpget/snmpbulkwalk, the children's; for
collectd, its process's) divided by the polls; the agents' own CPU is not in it. Results:
bench/out/snmp.json and the section between `<!-- snmp:start -->` and `<!-- snmp:end -->`
of docs/benchmarks.md.

    .venv/bin/python bench/snmp_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import Proc, proc_cpu_seconds, put_section, wait_until
from snmp_trap_mqtt import measure as trap_mqtt_measure

from tests.fixtures.snmp import snmp_answers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "snmp.json"
DOC = ROOT / "docs" / "benchmarks.md"
PASS_HELPER = ROOT / "tests" / "fixtures" / "snmp_pass.py"
UPS = "1.3.6.1.2.1.33.1"
OUTLETS = "1.3.6.1.4.1.318.1.1.26.9.4.3.1"
TEN = [
    f"{UPS}.1.1.0",
    f"{UPS}.1.2.0",
    f"{UPS}.2.1.0",
    f"{UPS}.2.3.0",
    f"{UPS}.2.4.0",
    f"{UPS}.2.5.0",
    f"{UPS}.2.7.0",
    f"{UPS}.3.3.1.3.1",
    f"{UPS}.4.1.0",
    f"{UPS}.4.4.1.5.1",
]
V3 = ("benchv3", "bench-auth-123", "bench-priv-456")
COLLECTD = "/usr/sbin/collectd"
#: collectd stores one value list per GET: a type with ten values takes the 10 objects in one
#: request; outlet rows have two values (current, power), named by the outlet-name column.
COLLECTD_TYPES = (
    "ten10 "
    + ", ".join(f"v{i}:GAUGE:U:U" for i in range(10))
    + "\noutlet2 current:GAUGE:U:U, power:GAUGE:U:U\n"
)
#: (hosts, Interval s) of collectd's fixed-rate runs, and our poller's: 200 GETs/s, 10 walks/s.
FIXED = {"get10": (20, 0.1), "walk48": (10, 1.0)}
#: collectd's Interval for "as fast as it goes": its read loop then runs back to back.
COLLECTD_MAX_INTERVAL = 0.0001


def free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_snmpd(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_udp()
    oids: dict[str, list[object]] = {
        f"{UPS}.1.1.0": ["string", "DummyCorp"],
        f"{UPS}.1.2.0": ["string", "Bench UPS"],
        f"{UPS}.2.1.0": ["integer", 2],
        f"{UPS}.2.3.0": ["integer", 60],
        f"{UPS}.2.4.0": ["integer", 100],
        f"{UPS}.2.5.0": ["integer", 545],
        f"{UPS}.2.7.0": ["integer", 27],
        f"{UPS}.3.3.1.3.1": ["integer", 230],
        f"{UPS}.4.1.0": ["integer", 3],
        f"{UPS}.4.4.1.5.1": ["integer", 28],
    }
    for n in range(1, 49):
        oids[f"{OUTLETS}.3.{n}"] = ["string", f"outlet-{n}"]
        oids[f"{OUTLETS}.6.{n}"] = ["gauge", 10 + n]
        oids[f"{OUTLETS}.7.{n}"] = ["gauge", 200 + n]
    state = root / "state.json"
    state.write_text(json.dumps(oids))
    (root / "persist").mkdir()
    conf = root / "snmpd.conf"
    helper = f"/usr/bin/python3 -u {PASS_HELPER} {state}"
    conf.write_text(
        f"agentAddress udp:127.0.0.1:{port}\nrocommunity public 127.0.0.1\n"
        f'createUser {V3[0]} SHA "{V3[1]}" AES "{V3[2]}"\nrouser {V3[0]} priv\n'
        f"pass_persist .1.3.6.1.2.1.33 {helper}\n"
        f"pass_persist .1.3.6.1.4.1.318.1.1.26 {helper}\nmaster off\n"
    )
    proc = subprocess.Popen(
        ["/usr/sbin/snmpd", "-f", "-C", "-c", str(conf), "-I", "-smux", "-m", "", "-Lo"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SNMP_PERSISTENT_DIR": str(root / "persist"), "MIBS": ""},
    )
    return proc, port


def start_simulator() -> tuple[subprocess.Popen[bytes], int]:
    port = free_udp()
    proc = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "facility-agent"),
            "--log-level",
            "warning",
            "simulate",
            "--nut-port",
            "0",
            "--modbus-port",
            "0",
            "--modbus-rtu",
            "off",
            "--snmp-port",
            str(port),
            "--snmp-pdu-outlets",
            "48",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def wait_answer(port: int, community: str, env: dict[str, str]) -> None:
    auth = ("-v2c", "-c", community)
    wait_until(lambda: snmp_answers(port, env, auth), 20, f"an SNMP agent on {port}")


async def measure(
    poll: Callable[[], Awaitable[Any]], seconds: float, concurrency: int = 1
) -> dict[str, float]:
    """Polls per second and client CPU ms per poll, `concurrency` polls in flight."""
    await poll()  # warm-up: sockets, engine discovery
    count = 0
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < stop_at:
            await poll()
            count += 1

    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return {"per_s": count / wall, "cpu_ms": 1000 * cpu / max(count, 1), "n": count}


def measure_tool(argv: list[str], env: dict[str, str], n: int) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    for _ in range(n):
        subprocess.run(argv, capture_output=True, env=env, check=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"per_s": n / wall, "cpu_ms": 1000 * cpu / n, "n": n}


def collectd_conf(
    root: Path, port: int, community: str, data: str, hosts: int, interval: float
) -> Path:
    (root / "types.db").write_text(COLLECTD_TYPES)
    ten = " ".join(f'".{o}"' for o in TEN)
    lines = [
        'Hostname "bench"',
        "FQDNLookup false",
        f'BaseDir "{root}"',
        'PluginDir "/usr/lib/collectd"',
        f'TypesDB "/usr/share/collectd/types.db" "{root / "types.db"}"',
        "Interval 1",
        "ReadThreads 2",
        "LoadPlugin snmp",
        "<Plugin snmp>",
        '  <Data "ten">',
        '    Type "ten10"',
        "    Table false",
        f"    Values {ten}",
        "  </Data>",
        '  <Data "outlets">',
        '    Type "outlet2"',
        "    Table true",
        f'    TypeInstanceOID ".{OUTLETS}.3"',
        f'    Values ".{OUTLETS}.6" ".{OUTLETS}.7"',
        "  </Data>",
    ]
    for i in range(hosts):
        lines += [
            f'  <Host "h{i}">',
            f'    Address "127.0.0.1:{port}"',
            "    Version 2",
            f'    Community "{community}"',
            f'    Collect "{data}"',
            f"    Interval {interval}",
            "    Timeout 1",
            "    Retries 0",
            "  </Host>",
        ]
    lines += [
        "</Plugin>",
        "LoadPlugin csv",
        "<Plugin csv>",
        f'  DataDir "{root / "csv"}"',
        "  StoreRates false",
        "</Plugin>",
    ]
    conf = root / "collectd.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def snmp_in_pkts(port: int, env: dict[str, str]) -> int:
    """snmpd's snmpInPkts.0: every request it received (SNMPv2-MIB)."""
    out = subprocess.run(
        ["snmpget", "-v2c", "-c", "public", "-Oqv", f"127.0.0.1:{port}", ".1.3.6.1.2.1.11.1.0"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return int(out.stdout.split()[-1])


def csv_lines(csv_dir: Path, t0: float, t1: float) -> int:
    """Value lists collectd wrote with a timestamp in [t0, t1)."""
    n = 0
    for path in csv_dir.rglob("*"):
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            with contextlib.suppress(ValueError):
                if t0 <= float(line.split(",", 1)[0]) < t1:
                    n += 1
    return n


def threads_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of `pid` from /proc/<pid>/task/*/schedstat (nanoseconds, where
    /proc/<pid>/stat counts 10 ms ticks); collectd's threads live as long as it does."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total / 1e9


def run_collectd(
    root: Path,
    label: str,
    port: int,
    community: str,
    data: str,
    hosts: int,
    interval: float,
    secs: float,
    rows: int,
    env: dict[str, str],
    count_requests: bool,
) -> dict[str, Any]:
    """collectd -f with the snmp and csv plugins; polls/s and its CPU ms per poll in a window."""
    d = root / f"collectd-{label}"
    d.mkdir()
    conf = collectd_conf(d, port, community, data, hosts, interval)
    subprocess.run([COLLECTD, "-C", str(conf), "-t"], env=env, check=True, capture_output=True)
    proc = Proc([COLLECTD, "-C", str(conf), "-f"], d / "collectd.log", env=env)
    try:
        time.sleep(2.0)  # start-up and the first reads
        if not proc.alive():
            raise SystemExit(f"collectd exited:\n{proc.output()[-2000:]}")
        req0 = snmp_in_pkts(port, env) if count_requests else 0
        t0, cpu0, ns0 = time.time(), proc_cpu_seconds(proc.pid), threads_cpu_seconds(proc.pid)
        time.sleep(secs)
        t1, cpu1, ns1 = time.time(), proc_cpu_seconds(proc.pid), threads_cpu_seconds(proc.pid)
        req1 = snmp_in_pkts(port, env) if count_requests else 0
    finally:
        proc.stop()
    polls = csv_lines(d / "csv", t0, t1) / rows
    log_lines = (d / "collectd.log").read_text(errors="replace").count("\n")
    r: dict[str, Any] = {
        "per_s": polls / (t1 - t0),
        # /proc/<pid>/stat's utime + stime (10 ms ticks) and the same from schedstat (ns).
        "cpu_ms": 1000 * (cpu1 - cpu0) / max(polls, 1),
        "cpu_ms_schedstat": 1000 * (ns1 - ns0) / max(polls, 1),
        "n": polls,
        "hosts": hosts,
        "interval": interval,
        "log_lines": log_lines,
    }
    if count_requests:
        # Our two snmpInPkts reads are in the count: negligible against thousands of polls.
        r["requests_per_poll"] = (req1 - req0) / max(polls, 1)
    return r


async def paced_driver(
    port: int, community: str, profile: str, hosts: int, interval: float, secs: float
) -> dict[str, Any]:
    """`hosts` devices under the agent's own DevicePoller at `interval`: CPU per poll at a fixed
    rate, the way the agent spends it (schedule, timeouts, driver, decoding)."""
    from facility_agent.drivers.snmp.driver import SnmpDeviceConfig, SnmpDriver
    from facility_agent.runtime.poller import DevicePoller, PollFailed, PollOutcome

    failed = 0

    def report(outcome: PollOutcome) -> None:
        nonlocal failed
        failed += isinstance(outcome, PollFailed)

    drivers = [
        SnmpDriver(
            SnmpDeviceConfig(
                id=f"d{i}",
                driver="snmp",
                host="127.0.0.1",
                port=port,
                community=community,
                profile=profile,
                interval=interval,
                max_repetitions=25,
            )
        )
        for i in range(hosts)
    ]
    pollers = [DevicePoller(d, report) for d in drivers]
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    try:
        await asyncio.sleep(max(1.5, 2 * interval))
        n0, failed0 = sum(p.polls for p in pollers), failed
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(secs)
        n, cpu = sum(p.polls for p in pollers) - n0, time.process_time() - cpu0
        wall = time.monotonic() - t0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for d in drivers:
            await d.close()
    return {
        "per_s": n / wall,
        "cpu_ms": 1000 * cpu / max(n, 1),
        "n": n,
        "hosts": hosts,
        "interval": interval,
        "failed": failed - failed0,
    }


async def trap_latency(n: int) -> dict[str, float]:
    from pydantic import SecretStr

    from facility_agent.core.model import Event
    from facility_agent.drivers.snmp import wire as ber
    from facility_agent.drivers.snmp.traps import SnmpDevice, TrapListener
    from facility_agent.drivers.snmp.traps_config import TrapsConfig

    got: list[float] = []
    arrived = asyncio.Event()

    def emit(event: Event) -> None:
        got.append(time.perf_counter())
        arrived.set()

    cfg = TrapsConfig(listen="127.0.0.1:0", community=SecretStr("public"), rate=1e6, burst=10**6)
    listener = TrapListener(
        cfg, "bench", [SnmpDevice("ups", "127.0.0.1", "ups-mib")], emit, lambda d: None
    )
    await listener.start()
    vbs = b"".join(
        ber.tlv(ber.SEQUENCE, ber.enc_oid(o) + v)
        for o, v in (
            ((1, 3, 6, 1, 2, 1, 1, 3, 0), ber.enc_uint(1234, ber.TIMETICKS)),
            ((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), ber.enc_oid((1, 3, 6, 1, 2, 1, 33, 2, 0, 1))),
        )
    )
    lat = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(n):
            pdu = ber.tlv(
                0xA7,
                ber.enc_int(i + 1) + ber.enc_int(0) + ber.enc_int(0) + ber.tlv(ber.SEQUENCE, vbs),
            )
            msg = ber.tlv(ber.SEQUENCE, ber.enc_int(1) + ber.tlv(ber.OCTET_STRING, b"public") + pdu)
            arrived.clear()
            t0 = time.perf_counter()
            sock.sendto(msg, ("127.0.0.1", listener.port))
            await asyncio.wait_for(arrived.wait(), 5)
            lat.append(1000 * (got[-1] - t0))
            await asyncio.sleep(0.01)
    finally:
        sock.close()
        await listener.stop()
    lat.sort()
    return {
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[int(0.99 * (len(lat) - 1))],
        "max_ms": lat[-1],
        "n": n,
    }


async def run(quick: bool) -> dict[str, Any]:
    from pysnmp.hlapi.v3arch import asyncio as h

    from facility_agent.drivers.snmp.client import FastClient
    from facility_agent.drivers.snmp.driver import SnmpDeviceConfig, SnmpDriver
    from facility_agent.drivers.snmp.wire import parse_oid

    secs = 2.0 if quick else 5.0
    tool_n = 30 if quick else 100
    tmp = Path(tempfile.mkdtemp(prefix="snmp-bench-"))
    env = {**os.environ, "SNMP_PERSISTENT_DIR": str(tmp / "client"), "MIBS": ""}
    snmpd, snmpd_port = start_snmpd(tmp)
    try:
        sim, sim_port = start_simulator()
    except BaseException:
        # A peer started and the next one not: stop it, or it outlives the bench.
        snmpd.terminate()
        snmpd.wait()
        raise
    profile10 = tmp / "ten.yaml"
    profile10.write_text(
        "protocol: snmp\nname: ten\nmetrics:\n"
        + "".join(f"  m.x{i}: {{oid: {o}, type: string}}\n" for i, o in enumerate(TEN))
    )
    results: dict[str, Any] = {"get10": {}, "walk48": {}, "trap": {}}
    try:
        wait_answer(snmpd_port, "public", env)
        wait_answer(sim_port, "ups-a", env)
        targets = {
            "snmpd": (snmpd_port, "public", "public"),
            "simulator": (sim_port, "ups-a", "pdu-a"),
        }
        oids = [parse_oid(o) for o in TEN]
        eng = h.SnmpEngine()
        for name, (port, ups_comm, pdu_comm) in targets.items():
            r: dict[str, Any] = {}
            fast = FastClient("127.0.0.1", port, ups_comm, 1, 1.0, 1)
            r["ours_client_c1"] = await measure(lambda f=fast: f.get(oids), secs)
            r["ours_client_c16"] = await measure(lambda f=fast: f.get(oids), secs, 16)
            await fast.close()
            drv = SnmpDriver(
                SnmpDeviceConfig(
                    id="b",
                    driver="snmp",
                    host="127.0.0.1",
                    port=port,
                    community=ups_comm,
                    profile=str(profile10),
                )
            )
            r["ours_driver_poll_c1"] = await measure(drv.poll, secs)
            await drv.close()
            tgt = await h.UdpTransportTarget.create(("127.0.0.1", port), timeout=1, retries=1)
            auth = h.CommunityData(ups_comm, mpModel=1)
            objs = [h.ObjectType(h.ObjectIdentity(o)) for o in TEN]

            async def pysnmp_get(auth: Any = auth, tgt: Any = tgt, objs: Any = objs) -> None:
                ei, es, _, _ = await h.get_cmd(
                    eng, auth, tgt, h.ContextData(), *objs, lookupMib=False
                )
                assert not ei and not es

            r["pysnmp_hlapi_c1"] = await measure(pysnmp_get, secs)
            r["pysnmp_hlapi_c16"] = await measure(pysnmp_get, secs, 16)
            if name == "snmpd":
                v3 = SnmpDriver(
                    SnmpDeviceConfig(
                        id="v3",
                        driver="snmp",
                        host="127.0.0.1",
                        port=port,
                        version="3",
                        user=V3[0],
                        auth_protocol="SHA",
                        auth_key=V3[1],
                        priv_protocol="AES",
                        priv_key=V3[2],
                        profile=str(profile10),
                    )
                )
                r["ours_driver_v3_authpriv_c1"] = await measure(v3.poll, secs)
                await v3.close()
            r["snmpget_process"] = await asyncio.to_thread(
                measure_tool,
                ["snmpget", "-v2c", "-c", ups_comm, "-On", f"127.0.0.1:{port}", *TEN],
                env,
                tool_n,
            )
            count = name == "snmpd"
            hosts, every = FIXED["get10"]
            r["collectd_max"] = await asyncio.to_thread(
                run_collectd, tmp, f"get-max-{name}", port, ups_comm, "ten", 1,
                COLLECTD_MAX_INTERVAL, secs, 1, env, count,
            )  # fmt: skip
            fsecs = 2 * secs  # fixed rate: a longer window, for /proc/<pid>/stat's 10 ms ticks
            r["collectd_fixed"] = await asyncio.to_thread(
                run_collectd, tmp, f"get-fixed-{name}", port, ups_comm, "ten", hosts, every,
                fsecs, 1, env, count,
            )  # fmt: skip
            r["ours_poller_fixed"] = await paced_driver(
                port, ups_comm, str(profile10), hosts, every, fsecs
            )
            results["get10"][name] = r

            w: dict[str, Any] = {}
            pdu = SnmpDriver(
                SnmpDeviceConfig(
                    id="p",
                    driver="snmp",
                    host="127.0.0.1",
                    port=port,
                    community=pdu_comm,
                    profile="apc-rpdu2",
                    max_repetitions=25,
                )
            )
            sample = await pdu.poll()
            w["outlets"] = len(
                [k for k in sample.metrics if k.startswith("outlet.") and k.endswith(".realpower")]
            )
            w["metrics"] = len(sample.metrics)
            w["ours_driver_poll_c1"] = await measure(pdu.poll, secs)
            await pdu.close()
            w["snmpbulkwalk_process"] = await asyncio.to_thread(
                measure_tool,
                [
                    "snmpbulkwalk",
                    "-v2c",
                    "-Cr25",
                    "-c",
                    pdu_comm,
                    "-On",
                    f"127.0.0.1:{port}",
                    OUTLETS,
                ],
                env,
                max(10, tool_n // 3),
            )
            hosts, every = FIXED["walk48"]
            wsecs = 2 * secs  # few walks per second: a longer window
            w["collectd_max"] = await asyncio.to_thread(
                run_collectd, tmp, f"walk-max-{name}", port, pdu_comm, "outlets", 1,
                COLLECTD_MAX_INTERVAL, wsecs, w["outlets"], env, count,
            )  # fmt: skip
            w["collectd_fixed"] = await asyncio.to_thread(
                run_collectd, tmp, f"walk-fixed-{name}", port, pdu_comm, "outlets", hosts,
                every, wsecs, w["outlets"], env, count,
            )  # fmt: skip
            w["ours_poller_fixed"] = await paced_driver(
                port, pdu_comm, "apc-rpdu2", hosts, every, wsecs
            )
            results["walk48"][name] = w
        eng.close_dispatcher()
        results["trap"] = await trap_latency(50 if quick else 200)
        results["trap_mqtt"] = await asyncio.to_thread(
            trap_mqtt_measure, 50 if quick else 200, sim_port
        )
    finally:
        for p in (snmpd, sim):
            p.terminate()
            p.wait(5)
    results["meta"] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "load": os.getloadavg(),
        "seconds_per_cell": secs,
    }
    return results


def _label(client: str, r: dict[str, Any]) -> str:
    if client == "collectd_max":
        return f"collectd, max rate (1 host, Interval {r['interval']:g} s)"
    if "hosts" in r:
        who = "collectd" if client.startswith("collectd") else "ours_poller"
        rate = r["hosts"] / r["interval"]
        return f"{who}, fixed {rate:g}/s ({r['hosts']} hosts x {r['interval']:g} s)"
    return client


def _cpu(r: dict[str, Any], digits: int) -> str:
    """collectd: schedstat (ns), then /proc/<pid>/stat (10 ms ticks) in brackets."""
    if "cpu_ms_schedstat" in r:
        return f"{r['cpu_ms_schedstat']:.{digits}f} ({r['cpu_ms']:.{digits}f})"
    return f"{r['cpu_ms']:.{digits}f}"


def render(res: dict[str, Any]) -> list[str]:
    m = res["meta"]
    lines = [
        f"Run {m['when']}, Python {m['python']}, nproc {m['nproc']}, load average "
        f"{' '.join(f'{x:.2f}' for x in m['load'])} at the end. `c1` = one poll at a time, `c16` "
        "= 16 in flight. CPU is the client's only (the agent runs in its own process); for "
        "snmpget/snmpbulkwalk it is the child processes' CPU, for collectd its own process's "
        "over the measuring window, all threads: from /proc/<pid>/task/*/schedstat (ns), and "
        "in brackets from /proc/<pid>/stat's utime + stime (10 ms ticks).",
        "",
        "### 10-object GET",
        "",
        "The 10 objects are UPS-MIB scalars; on snmpd they come from a pass_persist helper, "
        "which caps its rate. The issue's target is 600 GETs/s on one core: CPU ms/poll below "
        "1.67 meets it.",
        "",
        "| client | agent | polls/s | CPU ms/poll |",
        "| --- | --- | ---: | ---: |",
    ]
    for agent, rows in res["get10"].items():
        for client, r in rows.items():
            lines.append(f"| {_label(client, r)} | {agent} | {r['per_s']:.0f} | {_cpu(r, 3)} |")
    lines += [
        "",
        "### 48-outlet PDU walk (apc-rpdu2 profile, GETBULK max-repetitions 25)",
        "",
        "snmpd serves the outlet table through a Python pass_persist helper (one round trip per "
        "object), which bounds every client against it; the simulator's PDU also has phase and "
        "bank tables and the switched-outlet column, so the driver reads more there than "
        "snmpbulkwalk's one table and collectd's three columns (name, current, power).",
        "",
        "| client | agent | walks/s | CPU ms/walk | outlets, metrics |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for agent, w in res["walk48"].items():
        for client in (
            "ours_driver_poll_c1",
            "snmpbulkwalk_process",
            "collectd_max",
            "collectd_fixed",
            "ours_poller_fixed",
        ):
            r = w.get(client)
            if r is None:
                continue
            what = f"{w['outlets']}, {w['metrics']}"
            if client.startswith("collectd"):
                what = f"{w['outlets']}, {2 * w['outlets']} (+ names)"
            lines.append(
                f"| {_label(client, r)} | {agent} | {r['per_s']:.1f} | {_cpu(r, 2)} | {what} |"
            )
    g, wk = res["get10"].get("snmpd", {}), res["walk48"].get("snmpd", {})
    req_get = g.get("collectd_fixed", {}).get("requests_per_poll")
    req_walk = wk.get("collectd_fixed", {}).get("requests_per_poll")
    lines += [
        "",
        "### collectd's snmp plugin",
        "",
        "collectd-core 5.12 (Debian), snmp and csv plugins, `ReadThreads 2`, one `<Host>` "
        "block per polled device, `Timeout 1`, `Retries 0`. The 10 objects are one `<Data>` "
        "block with a custom 10-value type, so collectd sends one GET with the same 10 OIDs "
        + (f"(snmpd counted {req_get:.2f} requests per poll)" if req_get else "")
        + "; the outlet table is a `Table true` block (name column as type instance, current "
        "and power as values), which collectd walks with GETNEXT, one request per row"
        + (f" (snmpd counted {req_walk:.1f} requests per walk)" if req_walk else "")
        + ". Polls are counted from the CSV lines written inside the window (one line per GET, "
        "one per outlet row per walk). collectd's Interval is not whole-second: 5.12 takes "
        "fractional seconds, and with a tiny one its read loop polls back to back, so the "
        "*max rate* rows are its best single-device rate, comparable with `c1`. The *fixed* "
        "rows compare CPU per poll at the same rate: collectd with N hosts at an interval, and "
        "our driver under the agent's own DevicePoller with N devices at the same interval "
        "(schedule, timeouts and decoding included). collectd's CPU includes its CSV writer "
        "(it opens, appends and closes a file per value list) and, for the GET, two log lines "
        "per string object per poll: 2 of the 10 objects are strings (upsIdentManufacturer, "
        "upsIdentModel), which collectd cannot store as values (it stores NaN and logs an "
        "error). Our driver's CPU does not include publishing to MQTT.",
    ]
    ratios = []
    for agent in res["get10"]:
        g10, w48 = res["get10"][agent], res["walk48"][agent]
        if "collectd_fixed" in g10 and "ours_poller_fixed" in g10:
            cg = g10["collectd_fixed"].get("cpu_ms_schedstat", g10["collectd_fixed"]["cpu_ms"])
            cw = w48["collectd_fixed"].get("cpu_ms_schedstat", w48["collectd_fixed"]["cpu_ms"])
            ratios.append(
                f"on {agent} {g10['ours_poller_fixed']['cpu_ms'] / cg:.1f}x per GET and "
                f"{w48['ours_poller_fixed']['cpu_ms'] / cw:.1f}x per walk"
            )
    if ratios:
        lines += [
            "",
            "At the same fixed rate our agent's poller spends more CPU than collectd ("
            + "; ".join(ratios)
            + "): a C poller on net-snmp's synchronous API against Python asyncio with a "
            "per-device task, timers and our BER codec. Flat out, one device at a time "
            "(collectd's max rate against our driver's `c1`): "
            + "; ".join(
                f"{agent} GET {res['get10'][agent]['collectd_max']['per_s']:.0f} vs "
                f"{res['get10'][agent]['ours_driver_poll_c1']['per_s']:.0f}/s, walk "
                f"{res['walk48'][agent]['collectd_max']['per_s']:.0f} vs "
                f"{res['walk48'][agent]['ours_driver_poll_c1']['per_s']:.0f}/s"
                for agent in res["get10"]
                if "collectd_max" in res["get10"][agent]
            )
            + " (collectd walks with 49 GETNEXTs, we with GETBULK). Either is far beyond what "
            "a site needs (hundreds of devices at 1-2 s).",
        ]
    t = res["trap"]
    lines += [
        "",
        "### Trap -> event",
        "",
        f"A v2c upsTrapOnBattery sent on loopback to the agent's trap listener until the event "
        f"is handed to the sinks: p50 {t['p50_ms']:.2f} ms, p99 {t['p99_ms']:.2f} ms, max "
        f"{t['max_ms']:.2f} ms ({t['n']} traps).",
    ]
    q = res.get("trap_mqtt")
    if q:
        lines += [
            "",
            "### Trap -> MQTT event (`bench/snmp_trap_mqtt.py`)",
            "",
            "The whole agent in its own process (`Agent` with its default sinks: the MQTT sink "
            "over the durable outbox, as `facility-agent run` builds it) from a site file with "
            "`traps:` (default rate and burst) and `mqtt:`, one `snmp` device (ups-mib) on the "
            "simulator; a private Mosquitto; the benchmark sends a v2c upsTrapOnBattery to the "
            f"listener every {1000 * q['spacing_s']:.0f} ms and a paho subscriber on "
            "`facility/<site>/events` (QoS 1) stops the clock when that trap's event arrives "
            "(both clocks in the benchmark's process). Every trap also makes the agent poll the "
            "device at once, as in production.",
            "",
            "| traps | lost | p50 ms | p90 ms | p99 ms | max ms | over 10 ms | agent CPU ms/trap |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {q['n']} | {q['lost']} | {q['p50_ms']:.2f} | {q['p90_ms']:.2f} | "
            f"{q['p99_ms']:.2f} | {q['max_ms']:.2f} | {q['over_10ms']} | "
            f"{q['agent_cpu_ms_per_trap']:.2f} |",
            "",
            "The listener alone (previous paragraph) takes about 1 ms of the p50; the rest is the "
            "event's way through the outbox, the MQTT sink, Mosquitto and paho. The tail depends "
            "on what else the (shared, 2-core) machine runs: the agent, the simulator, Mosquitto "
            "and the subscriber share it.",
        ]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument(
        "--render", action="store_true", help="only rewrite the docs from bench/out/snmp.json"
    )
    args = ap.parse_args()
    if args.render:
        res = json.loads(OUT.read_text())
    else:
        res = asyncio.run(run(args.quick))
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(res, indent=1))
    print(put_section("snmp", "SNMP (`bench/snmp_bench.py`)", render(res), DOC))
    return 0


if __name__ == "__main__":
    sys.exit(main())
