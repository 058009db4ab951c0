"""Trap -> MQTT event latency, end to end, as in production.

- a private Mosquitto on a free loopback port;
- the agent in its own process (`facility_agent.runtime.agent.Agent` with its default sinks,
  i.e. the MQTT
  sink over the durable outbox, as `facility-agent run` builds it) from a site file with `traps:`
  (default rate and burst) and `mqtt:`, and one `snmp` device (ups-mib profile) on the simulated
  site's SNMP face, so every trap also triggers the confirming poll it would in production;
- this process sends SNMPv2c upsTrapOnBattery traps (the bytes net-snmp's `snmptrap -v2c` sends)
  to the agent's listener, one at a time, 60 ms apart (under the listener's default 20/s);
- a paho subscriber here on `facility/<site>/events` (QoS 1) stops the clock when the event
  carrying that trap's sequence number arrives.

Clock: `time.perf_counter()` before `sendto()` and in paho's on_message, both in this process.
Also the agent's CPU per trap (its /proc/<pid>/stat over the run, confirming polls included).

    .venv/bin/python bench/snmp_trap_mqtt.py [--traps N]     # prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _common import Proc, proc_cpu_seconds, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from facility_agent.drivers.snmp import wire as ber
from facility_agent.tools.local_broker import find_mosquitto, free_tcp_port

ROOT = Path(__file__).resolve().parent.parent
SITE = "trapbench"
#: upsEstimatedMinutesRemaining.0 carries the trap's sequence number, to match trap and event.
SEQ_OID = "1.3.6.1.2.1.33.1.2.3.0"
UPS_TRAP_ON_BATTERY = (1, 3, 6, 1, 2, 1, 33, 2, 0, 1)
SPACING = 0.06


def free_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def v2c_trap(seq: int, community: bytes = b"public") -> bytes:
    """An SNMPv2c Trap-PDU: sysUpTime.0, snmpTrapOID.0 = upsTrapOnBattery, SEQ_OID = seq."""
    vbs = b"".join(
        ber.tlv(ber.SEQUENCE, ber.enc_oid(o) + v)
        for o, v in (
            ((1, 3, 6, 1, 2, 1, 1, 3, 0), ber.enc_uint(seq, ber.TIMETICKS)),
            ((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), ber.enc_oid(UPS_TRAP_ON_BATTERY)),
            (tuple(int(x) for x in SEQ_OID.split(".")), ber.enc_int(seq)),
        )
    )
    body = ber.enc_int(seq) + ber.enc_int(0) + ber.enc_int(0) + ber.tlv(ber.SEQUENCE, vbs)
    pdu = ber.tlv(0xA7, body)
    msg: bytes = ber.tlv(ber.SEQUENCE, ber.enc_int(1) + ber.tlv(ber.OCTET_STRING, community) + pdu)
    return msg


class Subscriber:
    """paho on facility/SITE/events: the arrival time of each trap event, by sequence number."""

    def __init__(self, port: int) -> None:
        self.arrived: dict[int, float] = {}
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="trap-bench-reader")
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.ready.wait(10):
            raise SystemExit("the MQTT subscriber did not connect")

    def _connected(self, c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        c.subscribe(f"facility/{SITE}/events", qos=1)
        self.ready.set()

    def _message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        try:
            event = json.loads(msg.payload)
            seq = int(event["data"]["varbinds"][SEQ_OID])
        except (ValueError, KeyError, TypeError):
            return
        if event.get("type") != "trap.on_battery":
            return
        with self.cond:
            self.arrived.setdefault(seq, now)
            self.cond.notify_all()

    def wait(self, seq: int, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: seq in self.arrived, timeout)
            return self.arrived.get(seq)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def site_yaml(root: Path, broker_port: int, trap_port: int, snmp_port: int) -> Path:
    path = root / "site.yaml"
    path.write_text(
        f"""site: {SITE}
state_dir: {root / "state"}
mqtt: {{host: 127.0.0.1, port: {broker_port}, heartbeat: 600}}
traps: {{listen: "127.0.0.1:{trap_port}", community: public}}
devices:
  - {{id: ups-a, driver: snmp, host: 127.0.0.1, port: {snmp_port}, community: ups-a,
     profile: ups-mib, interval: 60, jitter: 0}}
"""
    )
    return path


def start_simulator(root: Path) -> tuple[Proc, int]:
    port = free_udp()
    argv = [str(ROOT / ".venv" / "bin" / "facility-agent"), "--log-level", "warning", "simulate"]
    argv += ["--nut-port", "0", "--modbus-port", "0", "--modbus-rtu", "off"]
    argv += ["--snmp-port", str(port)]
    return Proc(argv, root / "simulator.log"), port


def start_mosquitto(root: Path) -> tuple[Proc, int]:
    port = free_tcp_port()
    conf = root / "mosquitto.conf"
    conf.write_text(
        f"per_listener_settings false\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        "persistence false\nset_tcp_nodelay true\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = Proc([find_mosquitto(), "-c", str(conf)], root / "mosquitto.log")

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(up, 10, "mosquitto")
    return proc, port


async def run_agent(site_file: str) -> None:
    """The child: the production Agent (default sinks) until SIGTERM."""
    from facility_agent.config.site import load_site
    from facility_agent.runtime.agent import Agent

    agent = Agent(load_site(Path(site_file)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()


def measure(n: int, snmp_port: int | None = None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="snmp-trap-mqtt-"))
    broker, broker_port = start_mosquitto(root)
    sim: Proc | None = None
    agent: Proc | None = None
    sub: Subscriber | None = None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if snmp_port is None:
            sim, snmp_port = start_simulator(root)
        trap_port = free_udp()
        site = site_yaml(root, broker_port, trap_port, snmp_port)
        sub = Subscriber(broker_port)
        agent = Proc([sys.executable, __file__, "--agent-child", str(site)], root / "agent.log")
        # Warm-up: until the listener is bound and a first event makes it through.
        seq = 10_000
        t_end = time.monotonic() + 20
        while True:
            sock.sendto(v2c_trap(seq), ("127.0.0.1", trap_port))
            if sub.wait(seq, 0.5) is not None:
                break
            if time.monotonic() > t_end or not agent.alive():
                raise SystemExit(f"no trap event over MQTT:\n{agent.output()[-2000:]}")
            seq += 1
        time.sleep(1.0)  # the warm-up's confirming poll and the listener's bucket settle
        lat: list[float] = []
        lost = 0
        cpu0 = proc_cpu_seconds(agent.pid)
        for i in range(1, n + 1):
            t0 = time.perf_counter()
            sock.sendto(v2c_trap(i), ("127.0.0.1", trap_port))
            got = sub.wait(i, 5.0)
            if got is None:
                lost += 1
            else:
                lat.append(1000 * (got - t0))
            time.sleep(max(0.0, SPACING - (time.perf_counter() - t0)))
        cpu = proc_cpu_seconds(agent.pid) - cpu0
    finally:
        sock.close()
        if sub is not None:
            sub.close()
        if agent is not None:
            agent.stop()
        if sim is not None:
            sim.stop()
        broker.stop()
    lat.sort()
    return {
        "n": n,
        "lost": lost,
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[int(0.99 * (len(lat) - 1))],
        "max_ms": lat[-1],
        "mean_ms": statistics.fmean(lat),
        "p90_ms": lat[int(0.9 * (len(lat) - 1))],
        "over_10ms": sum(x > 10 for x in lat),
        "agent_cpu_ms_per_trap": 1000 * cpu / n,
        "spacing_s": SPACING,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traps", type=int, default=200)
    ap.add_argument("--agent-child", metavar="SITE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.agent_child:
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(run_agent(args.agent_child))
        return 0
    print(json.dumps(measure(args.traps), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
