"""`facility-agent`: run | check | demo | simulate.

Exit codes are part of the contract: 0 success, 1 invalid input (site file, arguments),
2 a runtime failure that stopped the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import ConfigError, SiteConfig, load_site

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_RUNTIME = 2

log = logging.getLogger("facility_agent")


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments; the contract says invalid input is 1."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_INVALID, f"{self.prog}: error: {message}\n")


def setup_logging(level: str, fmt: str | None = None) -> None:
    from .logfmt import formatter, resolve
    from .redact import install

    handler = logging.StreamHandler(sys.stderr)
    # text on a terminal, <priority>-prefixed lines under journald, or JSON (--log-format).
    handler.setFormatter(formatter(resolve(fmt)))
    # Every secret of the site masked in every record, whichever library logged it (redact.py).
    install([handler])
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    if level == "debug":
        logging.getLogger("facility_agent.sinks.mqtt.paho").setLevel(logging.DEBUG)


def _load(path: str) -> SiteConfig | None:
    try:
        return load_site(Path(path))
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    site = _load(args.config)
    if site is None:
        return EXIT_INVALID
    print(f"{args.config}: OK, site {site.site!r}, {len(site.devices)} device(s)")
    return EXIT_OK


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def _run_agent(site: SiteConfig, path: Path) -> None:
    from .agent import Agent
    from .runtime import run_service

    stop = asyncio.Event()
    install_stop_signals(stop)
    # systemd notify + watchdog, SIGHUP reload and the P/agent/recent summary (runtime.py).
    await run_service(Agent(site), path, stop)


def cmd_run(args: argparse.Namespace) -> int:
    site = _load(args.config)
    if site is None:
        return EXIT_INVALID
    try:
        asyncio.run(_run_agent(site, Path(args.config)))
    except Exception:
        log.exception("the agent stopped on an unexpected error")
        return EXIT_RUNTIME
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate_cmd import simulate

    return simulate(args)


def cmd_drill(args: argparse.Namespace) -> int:
    site = _load(args.config)
    if site is None:
        return EXIT_INVALID
    if site.shutdown is None:
        print(f"{args.config}: has no shutdown section: nothing to drill", file=sys.stderr)
        return EXIT_INVALID
    from .drill import run_drill, write_report

    try:
        report = asyncio.run(run_drill(site, args.scenario, speed=args.speed, dry_run=args.dry_run))
    except Exception as exc:
        log.exception("the drill stopped on an unexpected error")
        print(f"facility-agent drill: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(write_report(report, Path(args.report) if args.report else None), flush=True)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo

    return demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="facility-agent",
        description="Keeps a server room alive through power and network trouble.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "text", "journal", "json"],
        default=None,
        help="log lines: auto (journal under systemd, else text), text, journal or json "
        "[$FACILITY_AGENT_LOG_FORMAT or auto]",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run the agent in the foreground until SIGTERM/SIGINT")
    p.add_argument("-c", "--config", required=True, help="site file (YAML)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a site file; list every problem")
    p.add_argument("-c", "--config", required=True, help="site file (YAML)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "simulate", help="serve the bundled simulated site so any client can be pointed at it"
    )
    p.add_argument("--site", help="simulated site file (default: the bundled sim-site.yaml)")
    p.add_argument("--scenario", help="scenario name (bundled) or YAML file to play")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
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
        "the next servers on the next ports (e.g. 6230); 0 = any free; default: no IPMI face",
    )
    p.add_argument(
        "--snmp-trap-target",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="send the SNMP agents' traps there (repeatable)",
    )
    p.add_argument(
        "--snmp-pdu-outlets", type=int, default=24, help="outlets per simulated PDU over SNMP"
    )
    p.add_argument(
        "--exit-after-scenario", action="store_true", help="stop when the scenario has ended"
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "drill", help="play a scenario against the simulated site with this site's real plan"
    )
    p.add_argument("-c", "--config", required=True, help="site file (YAML)")
    p.add_argument("--scenario", default="utility-outage", help="scenario name or file")
    p.add_argument("--speed", type=float, default=None, help="clock speed [the scenario's]")
    p.add_argument("--dry-run", action="store_true", help="hooks are not run, only reported")
    p.add_argument("--report", help="also write the report to this file")
    p.set_defaults(func=cmd_drill)

    p = sub.add_parser(
        "demo", help="run the agent against the simulated site through a scripted outage"
    )
    p.add_argument("--scenario", default="demo-outage", help="scenario to play [demo-outage]")
    p.add_argument(
        "--speed", type=float, default=None, help="simulated seconds per real second [scenario's]"
    )
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    p.set_defaults(func=cmd_demo)

    from . import runbook, service, status_cmd

    status_cmd.add_parser(sub)
    runbook.add_parser(sub)
    service.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
