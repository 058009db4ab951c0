"""`facility-agent`: run | check | drill | demo | simulate | status | runbook | install-service.

Exit codes are part of the contract: 0 success, 1 invalid input (site file, arguments, an
unknown scenario), 2 a runtime failure. `status` is a monitoring check and follows the
monitoring-plugins convention instead: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, and its usage
errors are UNKNOWN (3). No path prints a traceback unless `--log-level debug` asks for one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from facility_agent import __version__
from facility_agent.config.site import ConfigError, SiteConfig, load_site

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_RUNTIME = 2
#: Usage errors of `status` (monitoring-plugins UNKNOWN).
EXIT_STATUS_USAGE = 3

#: The site file every command reads unless `-c` names another (as upsmon has upsmon.conf).
DEFAULT_CONFIG = "/etc/facility-agent/site.yaml"

log = logging.getLogger("facility_agent")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in its help, unless the help already says it in [brackets]."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "[" in text
            or not action.option_strings
            or default in (None, False, argparse.SUPPRESS)
            or isinstance(default, list)
        ):
            return text
        return f"{text} [{default}]"


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments; the contract says invalid input is 1 (`status`: 3)."""

    usage_exit = EXIT_INVALID

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_float(text: str) -> float:
    """A clock speed or a timeout: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


def add_config_option(p: argparse.ArgumentParser, help: str = "site file (YAML)") -> None:
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=help)


def add_global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """Logging flags; on a subcommand too, so they work after it (`run -c x --log-format json`)."""
    p.add_argument(
        "--log-level",
        default="info" if top else argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        help="log level [info]",
    )
    p.add_argument(
        "--log-format",
        choices=["auto", "text", "journal", "json"],
        default=None if top else argparse.SUPPRESS,
        help="log lines: auto (journal under systemd, else text), text, journal or json "
        "[$FACILITY_AGENT_LOG_FORMAT or auto]",
    )


def setup_logging(level: str, fmt: str | None = None) -> None:
    from facility_agent.runtime.logfmt import formatter, resolve
    from facility_agent.runtime.redact import install

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
    if getattr(args, "probe", False):
        return EXIT_OK if asyncio.run(_probe(site)) else EXIT_INVALID
    return EXIT_OK


async def _probe(site: SiteConfig) -> bool:
    """Each driver probes its own devices (`Driver.probe`)."""
    from facility_agent.core.registry import driver_classes

    ok = True
    for name, cls in sorted(driver_classes().items()):
        mine = [dev for dev in site.devices if dev.driver == name]
        if mine:
            ok = await cls.probe(mine) and ok
    return ok


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def _run_agent(site: SiteConfig, path: Path) -> None:
    from facility_agent.runtime.agent import Agent
    from facility_agent.runtime.service import run_service

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
    except Exception as exc:
        log.error("the agent stopped on an unexpected error: %s", _describe(exc), exc_info=_debug())
        return EXIT_RUNTIME
    return EXIT_OK


def _debug() -> bool:
    return log.getEffectiveLevel() <= logging.DEBUG


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def cmd_simulate(args: argparse.Namespace) -> int:
    from facility_agent.simulators.command import simulate

    return simulate(args)


def cmd_drill(args: argparse.Namespace) -> int:
    site = _load(args.config)
    if site is None:
        return EXIT_INVALID
    if site.shutdown is None:
        print(f"{args.config}: has no shutdown section: nothing to drill", file=sys.stderr)
        return EXIT_INVALID
    from facility_agent.tools.drill import (
        Progress,
        host_power_steps,
        run_drill,
        scenario_problem,
        write_report,
    )

    problem = scenario_problem(args.scenario)
    if problem:
        print(f"facility-agent drill: {problem}", file=sys.stderr)
        return EXIT_INVALID
    poweroff = host_power_steps(site)
    if poweroff and not args.dry_run:
        print(
            "facility-agent drill: this plan powers the host off ("
            + "; ".join(poweroff)
            + "): a drill would really do it. Run it with --dry-run (commands are reported, "
            "device actions still go to the simulated devices).",
            file=sys.stderr,
        )
        return EXIT_INVALID
    progress = Progress(print_line)
    print(
        f"drill: scenario {args.scenario}"
        + (" (DRY RUN: commands and hooks are reported, not run)" if args.dry_run else ""),
        flush=True,
    )
    try:
        report = asyncio.run(
            run_drill(
                site,
                args.scenario,
                speed=args.speed,
                dry_run=args.dry_run,
                on_tick=progress.tick,
                options=vars(args),
            )
        )
    except Exception as exc:
        log.debug("the drill stopped", exc_info=True)
        print(f"facility-agent drill: stopped on an error: {_describe(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    progress.tick(report, None)
    print(write_report(report, Path(args.report) if args.report else None), flush=True)
    return EXIT_OK


def print_line(line: str) -> None:
    print(line, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from facility_agent.tools.demo import demo

    return demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="facility-agent",
        description="Keeps a server room alive through power and network trouble. "
        "Exit codes: 0 success, 1 invalid input (arguments, site file, scenario), 2 a runtime "
        "failure; `status` is a monitoring check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = _Parser(add_help=False)
    add_global_options(common, top=False)

    def command(
        name: str,
        help: str,
        func: Callable[[argparse.Namespace], int],
        *,
        config: bool = False,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=help, description=help, parents=[common]
        )
        if config:
            add_config_option(p)
        p.set_defaults(func=func)
        return p

    command("run", "run the agent in the foreground until SIGTERM/SIGINT", cmd_run, config=True)

    p = command(
        "check",
        "validate a site file; list every problem and how to fix it",
        cmd_check,
        config=True,
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="also ask the devices whose driver can tell which profile fits them, and why "
        "(check is offline otherwise)",
    )

    from facility_agent.simulators import command as simulate

    p = command(
        "simulate",
        "serve the bundled simulated site so any client can be pointed at it",
        cmd_simulate,
    )
    simulate.add_arguments(p, positive_float)

    p = command(
        "drill",
        "play a scenario against the simulated site with this site's real plan",
        cmd_drill,
        config=True,
    )
    p.add_argument(
        "--scenario",
        default="utility-outage",
        help="bundled scenario name or scenario file [utility-outage: the utility fails for 30 s "
        "and the generator will not start]",
    )
    p.add_argument(
        "--speed", type=positive_float, default=None, help="clock speed [the scenario's]"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run no command: `run:` steps (the host's poweroff too) and hooks are only "
        "reported; device actions go to the simulated devices, as in every drill",
    )
    p.add_argument("--report", metavar="FILE", help="also write the report to this file")
    from facility_agent.core.registry import driver_classes

    # Options of the drivers' own (`--nut-face-listen`), found as the drivers are.
    for _, cls in sorted(driver_classes().items()):
        cls.add_drill_options(p)

    p = command(
        "demo", "run the agent against the simulated site through a scripted outage", cmd_demo
    )
    p.add_argument("--scenario", default="demo-outage", help="scenario to play")
    p.add_argument(
        "--speed",
        type=positive_float,
        default=None,
        help="simulated seconds per real second [the scenario's]",
    )
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")

    from facility_agent.cli import install_service as service
    from facility_agent.cli import runbook
    from facility_agent.cli import status as status_cmd

    for module in (status_cmd, runbook, service):
        module.add_parser(command)
    # Commands of the drivers' own (`snmp record`), found as the drivers are.
    for _, cls in sorted(driver_classes().items()):
        cls.add_commands(command)
    sub.choices["status"].usage_exit = EXIT_STATUS_USAGE
    return parser


def _usage_exit(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """The usage-error code for this command line: `status` is a check (3), the rest 1."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((a for a in argv if a in sub.choices), None)
    code: int = getattr(sub.choices[command], "usage_exit", EXIT_INVALID) if command else 1
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.usage_exit = _usage_exit(parser, argv)  # type: ignore[attr-defined]
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return EXIT_RUNTIME
    except BrokenPipeError:
        # `status | head -1`: the reader went away; the result stands, nothing more to say.
        _quiet_stdout()
        return EXIT_OK
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        print(
            f"facility-agent {args.command}: unexpected error: {_describe(exc)} "
            "(--log-level debug shows where)",
            file=sys.stderr,
        )
        return EXIT_STATUS_USAGE if args.command == "status" else EXIT_RUNTIME
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    return code


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail (exit 120)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
