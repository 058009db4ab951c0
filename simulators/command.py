"""`facility-agent simulate`: serve the simulated site for any client to point at. The
simulator's own command line (its faces, ports and options), so the agent's CLI only names it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser, positive: Callable[[str], Any]) -> None:
    """`facility-agent simulate`'s options: which site, scenario, speed, and each face's port."""
    p.add_argument(
        "--sim-site",
        "--site",  # the old spelling, kept for scripts
        metavar="FILE",
        help="simulated site file [the bundled sim-site.yaml]",
    )
    p.add_argument("--scenario", help="scenario name (bundled) or YAML file to play [none]")
    p.add_argument("--speed", type=positive, default=1.0, help="simulated seconds per real second")
    p.add_argument(
        "--listen",
        "--host",  # the old spelling, kept for scripts
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address the faces listen on",
    )
    p.add_argument("--nut-port", type=int, default=3493, help="NUT (upsd) port; 0 = any free")
    p.add_argument(
        "--modbus-port", type=int, default=5020, help="Modbus TCP port (genset unit 10, ATS 11)"
    )
    p.add_argument(
        "--modbus-rtu",
        default="pty",
        help="Modbus RTU: 'pty' (a new pseudo-terminal, path printed), a path for a symlink to "
        "it, or 'off'",
    )
    p.add_argument(
        "--snmp-port",
        type=int,
        default=1161,
        help="SNMP UDP port of every simulated agent (community = equipment name); 0 = any free",
    )
    p.add_argument(
        "--ipmi-port",
        type=int,
        default=None,
        help="serve every simulated server's BMC over IPMI (RMCP+): UDP port of the first one, "
        "the next servers on the next ports (e.g. 6230); 0 = any free [off: no IPMI face]",
    )
    p.add_argument(
        "--snmp-trap-target",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="send the SNMP agents' traps there (repeatable) [none]",
    )
    p.add_argument(
        "--snmp-pdu-outlets", type=int, default=24, help="outlets per simulated PDU over SNMP"
    )
    p.add_argument(
        "--exit-after-scenario", action="store_true", help="stop when the scenario has ended"
    )


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"facility-agent simulate: {text!r} is not HOST:PORT")
    return host, int(port)


def simulate(args: argparse.Namespace) -> int:
    from facility_agent.simulators.scenario import ScenarioError
    from facility_agent.simulators.serve import SimulatorInfo, SimulatorOptions, run_simulator
    from facility_agent.simulators.site import SiteConfigError

    options = SimulatorOptions(
        site_file=args.sim_site,
        scenario=args.scenario,
        speed=args.speed,
        host=args.listen,
        nut_port=args.nut_port,
        modbus_port=args.modbus_port,
        modbus_rtu={"pty": True, "off": False}.get(args.modbus_rtu, args.modbus_rtu),
        snmp_port=args.snmp_port,
        ipmi_port=args.ipmi_port,
        snmp_trap_targets=[_host_port(t) for t in args.snmp_trap_target],
        snmp_pdu_outlets=args.snmp_pdu_outlets,
        stop_at_scenario_end=args.exit_after_scenario,
    )

    def ready(info: SimulatorInfo) -> None:
        faces = ", ".join(f"{face} on {info.host}:{port}" for face, port in info.ports.items())
        print(f"simulated site {info.site!r} serving {faces}", flush=True)
        if info.nut_port:
            names = " ".join(f"{u}@{info.host}:{info.nut_port}" for u in info.ups)
            print(f"try: upsc {names.split()[0]}   (UPS: {names})", flush=True)
        if info.extra.get("modbus_rtu"):
            tty = info.extra["modbus_rtu"]
            print(f"Modbus RTU on {tty}: mbpoll -m rtu -b 9600 -P none -a 10 -0 -r 1024 {tty}")
        if "snmp" in info.ports:
            print(
                f"try: snmpwalk -v2c -c ups-a -On {info.host}:{info.ports['snmp']} "
                ".1.3.6.1.2.1.33   (communities: ups-*, pdu-*, ats-1, switch)",
                flush=True,
            )
        bmcs = {k[5:]: v for k, v in info.ports.items() if k.startswith("ipmi:")}
        if bmcs:
            name, port = next(iter(bmcs.items()))
            print(
                f"try: ipmitool -I lanplus -C 3 -H {info.host} -p {port} -U admin -P adminpass "
                f"sdr list   ({name}; BMCs: {bmcs})",
                flush=True,
            )
        if info.scenario:
            print(f"scenario {info.scenario!r} at x{info.speed:g}", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_simulator(options, ready=ready, stop=stop)

    try:
        asyncio.run(main())
    except (ScenarioError, SiteConfigError, FileNotFoundError) as exc:
        print(f"facility-agent simulate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"facility-agent simulate: cannot serve: {exc}", file=sys.stderr)
        return 2
    return 0
