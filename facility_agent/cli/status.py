"""`facility-agent status`: the whole site at a glance, read from the agent's retained MQTT.

It reads what any MQTT consumer can: `P/+/state` (devices and `group-*` redundancy groups),
`P/agent/status` and the agent's summary `P/agent/recent` (plan in progress, recent events). So
it works from any box that reaches the broker, with or without the agent running there.

The exit code follows the monitoring-plugins convention (Nagios, Icinga, Zabbix's agent, ...):
0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. This is a different convention from the agent's own
0/1/2 (success, invalid input, runtime failure) on purpose: `status` is a check, and a check is
read by a monitoring system. Invalid arguments or a bad site file are UNKNOWN (3) here too.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from facility_agent.config.site import MqttConfig
    from facility_agent.core.driver import AddCommand

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}

#: Device flags that make the site CRITICAL / WARNING (NUT's and the profiles' flags).
CRITICAL_FLAGS = frozenset({"OB", "LB", "FSD"})
WARNING_FLAGS = frozenset(
    {"RB", "OVER", "BYPASS", "OFF", "INPUT_LOST", "FEED_LOST", "REDUNDANCY_LOST", "LINK_DOWN"}
)


@dataclass
class Retained:
    """What the broker holds for one site."""

    reachable: bool = True
    error: str = ""
    agent: str | None = None
    recent: dict[str, Any] | None = None
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)


def fetch(
    host: str,
    port: int,
    prefix: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: Any = None,
    timeout: float = 3.0,
    quiet: float = 0.3,
) -> Retained:
    """Subscribe, take the retained messages, stop once the broker has been quiet a moment."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    out = Retained()
    lock = threading.Lock()
    last = [0.0]
    subscribed = threading.Event()
    failed: list[str] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"facility-agent-status-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv311,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        import ssl

        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
        )
        if tls.insecure:
            client.tls_insecure_set(True)

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        if rc.is_failure:
            failed.append(f"the broker refused the connection: {rc}")
            subscribed.set()
            return
        c.subscribe([(f"{prefix}/+/state", 1), (f"{prefix}/agent/status", 1),
                     (f"{prefix}/agent/recent", 1)])  # fmt: skip

    def on_subscribe(*_: Any) -> None:
        last[0] = time.monotonic()
        subscribed.set()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        with lock:
            last[0] = time.monotonic()
            _take(out, prefix, msg.topic, bytes(msg.payload))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    where = f"{host}:{port}"
    try:
        client.connect(host, port, keepalive=10)
    except OSError as exc:
        return Retained(False, f"cannot reach the MQTT broker {where}: {exc.strerror or exc}")
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            return Retained(False, f"no answer from the MQTT broker {where} in {timeout:g} s")
        if failed:
            return Retained(False, f"{where}: {failed[0]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                if time.monotonic() - last[0] >= quiet:
                    break
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return out


def _take(out: Retained, prefix: str, topic: str, payload: bytes) -> None:
    rest = topic[len(prefix) + 1 :]
    if rest == "agent/status":
        out.agent = payload.decode(errors="replace")
        return
    if not payload:
        return  # a cleared retained message: a device removed from the site
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return
    if not isinstance(body, dict):
        return
    if rest == "agent/recent":
        out.recent = body
    elif rest.endswith("/state"):
        name = rest.removesuffix("/state")
        if name.startswith("group-") and body.get("driver") == "policy":
            out.groups[name.removeprefix("group-")] = body
        else:
            out.devices[name] = body


@dataclass
class Verdict:
    code: int
    problems: list[tuple[int, str]]

    @property
    def name(self) -> str:
        return NAMES[self.code]


def _age(ts: str | None, now: datetime) -> float | None:
    if not ts:
        return None
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - then).total_seconds()


def judge(data: Retained, *, stale: float = 180.0, now: datetime | None = None) -> Verdict:
    """The worst state of the site, with every reason for it."""
    now = now or datetime.now(UTC)
    problems: list[tuple[int, str]] = []
    if not data.reachable:
        return Verdict(UNKNOWN, [(UNKNOWN, data.error)])
    if data.agent is None and not data.devices:
        return Verdict(UNKNOWN, [(UNKNOWN, "no retained state for this site (wrong site/prefix?)")])
    if data.agent != "online":
        problems.append((CRITICAL, "the agent is offline: nothing is watching the site"))
    for name, st in sorted(data.devices.items()):
        flags = set(st.get("status") or [])
        if st.get("comm") == "lost":
            sev = CRITICAL if "OB" in flags else WARNING
            problems.append((sev, f"{name}: communication lost ({st.get('reason', '?')})"))
        bad = sorted(flags & CRITICAL_FLAGS)
        if bad:
            problems.append((CRITICAL, f"{name}: {' '.join(bad)}"))
        warn = sorted(flags & WARNING_FLAGS)
        if warn:
            problems.append((WARNING, f"{name}: {' '.join(warn)}"))
        age = _age(st.get("ts"), now)
        if age is not None and age > stale and data.agent == "online":
            problems.append((WARNING, f"{name}: no update for {age:.0f} s"))
    for gid, st in sorted(data.groups.items()):
        status = (st.get("status") or ["?"])[0]
        m = st.get("metrics") or {}
        text = f"group {gid} {status.lower()} ({m.get('redundancy.healthy', '?')} of "
        text += f"{m.get('redundancy.members', '?')}, needs {m.get('redundancy.min', '?')})"
        if status == "LOST":
            problems.append((CRITICAL, text))
        elif status != "OK":
            problems.append((WARNING, text))
    plan = (data.recent or {}).get("plan")
    if isinstance(plan, dict):
        if plan.get("kind") == "shutdown" and plan.get("state") == "running":
            problems.append((CRITICAL, f"shutdown in progress: {plan.get('reason', '')}"))
        elif plan.get("site_down"):
            problems.append((CRITICAL, "the site is shut down; recovery has not run yet"))
        elif plan.get("kind") == "recovery":
            problems.append((WARNING, "recovery in progress"))
    problems.extend(task_problems(data.recent or {}))
    reload = (data.recent or {}).get("last_reload")
    if isinstance(reload, dict) and not reload.get("ok", True):
        problems.append(
            (WARNING, "the last reload was refused: the site file on disk is not running")
        )
    code = max((p[0] for p in problems), default=OK)
    problems.sort(key=lambda p: -p[0])
    return Verdict(code, problems)


def task_problems(recent: dict[str, Any]) -> list[tuple[int, str]]:
    """Supervised tasks of the agent that are dead now (supervise.py): a WARNING each, as the
    part they run (a poller, an output) is not working until the restart succeeds."""
    tasks = recent.get("tasks")
    if not isinstance(tasks, dict):
        return []
    out: list[tuple[int, str]] = []
    for entry in tasks.get("down") or []:
        if not isinstance(entry, dict):
            continue
        text = f"agent task {entry.get('name', '?')} is down"
        if entry.get("last_error"):
            text += f" ({entry['last_error']})"
        text += f", restarted {entry.get('restarts', 0)} time(s) so far"
        out.append((WARNING, text))
    return out


def _fmt_runtime(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value / 60:.0f} min" if value >= 120 else f"{value:.0f} s"
    return ""


def _fmt(value: Any, unit: str = "") -> str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def summary_line(site: str, verdict: Verdict, data: Retained) -> str:
    """The first line, as a monitoring plugin prints it."""
    if verdict.problems:
        detail = "; ".join(p[1] for p in verdict.problems[:4])
        more = len(verdict.problems) - 4
        if more > 0:
            detail += f"; and {more} more"
    else:
        detail = f"{len(data.devices)} device(s) ok, {len(data.groups)} group(s) ok"
    return f"FACILITY {verdict.name} - site {site}: {detail}"


def as_json(site: str, verdict: Verdict, data: Retained) -> dict[str, Any]:
    recent = data.recent or {}
    return {
        "site": site,
        "state": verdict.name,
        "exit": verdict.code,
        "problems": [{"state": NAMES[c], "text": t} for c, t in verdict.problems],
        "agent": data.agent,
        "devices": data.devices,
        "groups": data.groups,
        "plan": recent.get("plan"),
        "last_reload": recent.get("last_reload"),
        "tasks": recent.get("tasks"),
        "events": recent.get("events", []),
    }


def render(site: str, verdict: Verdict, data: Retained) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    colour = {OK: "green", WARNING: "yellow", CRITICAL: "red", UNKNOWN: "magenta"}[verdict.code]
    # The first line is plain: monitoring systems read it as the check's output.
    print(summary_line(site, verdict, data), flush=True)
    if not data.reachable:
        return
    console.print(f"[bold {colour}]{verdict.name}[/]  agent: {data.agent or 'unknown'}")
    table = Table(title="devices", title_justify="left")
    for col in (
        "device",
        "driver",
        "comm",
        "status",
        "charge",
        "runtime",
        "load",
        "input V",
        "detail",
    ):
        table.add_column(col)
    for name, st in sorted(data.devices.items()):
        m = st.get("metrics") or {}
        flags = st.get("status") or []
        style = "red" if st.get("comm", "?") == "lost" or set(flags) & CRITICAL_FLAGS else ""
        cells = _device_cells(st, reason_width=60)
        if not cells["detail"] and "driver.profile" in m:
            # an SNMP device on `profile: auto`: what detection picked
            cells["detail"] = f"profile {m['driver.profile']} (auto)"
        table.add_row(name, *cells.values(), style=style)
    console.print(table)
    if data.groups:
        groups = Table(title="redundancy groups", title_justify="left")
        for col in ("group", "status", "healthy", "members", "min"):
            groups.add_column(col)
        for gid, st in sorted(data.groups.items()):
            m = st.get("metrics") or {}
            groups.add_row(
                gid,
                " ".join(st.get("status") or []),
                str(m.get("redundancy.healthy", "")),
                str(m.get("redundancy.members", "")),
                str(m.get("redundancy.min", "")),
            )
        console.print(groups)
    recent = data.recent or {}
    plan = recent.get("plan")
    if isinstance(plan, dict):
        stage = (
            f", stage {plan.get('stage')} "
            f"({plan.get('stage_index', 0) + 1} of {plan.get('stages')})"
            if plan.get("stage")
            else ""
        )
        console.print(
            f"[bold]plan:[/] {plan.get('kind')} {plan.get('state')}{stage} {plan.get('reason', '')}"
        )
    else:
        console.print("plan: none running")
    tasks = recent.get("tasks")
    if isinstance(tasks, dict) and tasks.get("restarts"):
        restarts = ", ".join(f"{k} x{v}" for k, v in sorted(tasks["restarts"].items()))
        console.print(f"task restarts: {restarts}")
    events = recent.get("events") or []
    if events:
        ev_table = Table(title="recent events", title_justify="left")
        for col in ("time", "severity", "device", "type", "message"):
            ev_table.add_column(col)
        for ev in events[-10:]:
            ev_table.add_row(
                str(ev.get("ts", ""))[11:19],
                str(ev.get("severity", "")),
                str(ev.get("device", "")),
                str(ev.get("type", "")),
                str(ev.get("message", "")),
            )
        console.print(ev_table)
    if verdict.problems:
        for code, text in verdict.problems:
            console.print(f"  [{'red' if code == CRITICAL else 'yellow'}]{NAMES[code]}[/] {text}")


def _site_and_mqtt(path: str) -> tuple[str, MqttConfig | None] | None:
    """Only `site:` and `mqtt:` of a site file that does not validate as a whole."""
    import yaml
    from pydantic import ValidationError

    from facility_agent.config.secrets import SecretRefError, substitute
    from facility_agent.config.site import MqttConfig

    try:
        raw = yaml.safe_load(Path(path).read_text())
        site = raw["site"]
        mqtt = raw.get("mqtt")
        if mqtt is not None:
            mqtt = {k: substitute(v, None, Path(path).parent) for k, v in mqtt.items()}
            return str(site), MqttConfig.model_validate(mqtt)
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError, ValidationError,
            SecretRefError):  # fmt: skip
        return None
    return str(site), None


def _device_cells(st: dict[str, Any], reason_width: int | None = None) -> dict[str, str]:
    """The columns of one device row (in the table's order), shared by the table and the plain
    lines; the table cuts a long reason to `reason_width`."""
    m = st.get("metrics") or {}
    detail = ""
    if "generator.state" in m:
        detail = f"generator {m['generator.state']}"
        if "generator.fuel.level" in m:
            detail += f", fuel {_fmt(m['generator.fuel.level'], '%')}"
    elif st.get("reason"):
        detail = str(st["reason"])[:reason_width]
    return {
        "driver": str(st.get("driver", "")),
        "comm": str(st.get("comm", "?")),
        "status": " ".join(st.get("status") or []),
        "charge": _fmt(m.get("battery.charge"), "%"),
        "runtime": _fmt_runtime(m.get("battery.runtime")),
        "load": _fmt(m.get("ups.load", m.get("generator.load")), "%"),
        "input V": _fmt(m.get("input.voltage", m.get("mains.voltage"))),
        "detail": detail,
    }


def plain_lines(site: str, verdict: Verdict, data: Retained) -> list[str]:
    """Full-width lines for pipes, mail and logs: one thing per line, nothing cut or wrapped."""
    out = [summary_line(site, verdict, data)]
    if not data.reachable:
        return out
    out.append(f"agent: {data.agent or 'unknown'}")
    for name, st in sorted(data.devices.items()):
        cells = _device_cells(st)
        parts = [f"{k} {v}" for k, v in cells.items() if v and k not in ("driver", "detail")]
        detail = f"; {cells['detail']}" if cells["detail"] else ""
        out.append(f"device {name} ({cells['driver']}): {', '.join(parts)}{detail}")
    for gid, st in sorted(data.groups.items()):
        m = st.get("metrics") or {}
        out.append(
            f"group {gid}: {' '.join(st.get('status') or [])}, "
            f"{m.get('redundancy.healthy', '?')} of {m.get('redundancy.members', '?')} healthy, "
            f"needs {m.get('redundancy.min', '?')}"
        )
    recent = data.recent or {}
    plan = recent.get("plan")
    if isinstance(plan, dict):
        stage = f", stage {plan.get('stage')}" if plan.get("stage") else ""
        out.append(f"plan: {plan.get('kind')} {plan.get('state')}{stage} {plan.get('reason', '')}")
    else:
        out.append("plan: none running")
    for ev in (recent.get("events") or [])[-10:]:
        out.append(
            f"event {ev.get('ts', '')} {ev.get('severity', '')} {ev.get('device', '')} "
            f"{ev.get('type', '')}: {ev.get('message', '')}"
        )
    for code, text in verdict.problems:
        out.append(f"{NAMES[code]}: {text}")
    return out


def _perf_label(name: str) -> str:
    return "'" + name.replace("'", "_").replace("=", "_") + "'"


def nagios_line(site: str, verdict: Verdict, data: Retained) -> str:
    """One line, `TEXT | perfdata`, as Nagios/Icinga plugins print it (perfdata: label=value)."""
    perf = [
        f"devices={len(data.devices)};;;0",
        f"comm_lost={sum(1 for st in data.devices.values() if st.get('comm') == 'lost')};;;0",
        f"problems={len(verdict.problems)};;;0",
    ]
    for name, st in sorted(data.devices.items()):
        m = st.get("metrics") or {}
        for key, label, uom in (
            ("battery.charge", "charge", "%"),
            ("battery.runtime", "runtime", "s"),
            ("ups.load", "load", "%"),
        ):
            value = m.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                bounds = ";;;0;100" if uom == "%" else ";;;0"
                perf.append(f"{_perf_label(f'{name} {label}')}={value:g}{uom}{bounds}")
    for gid, st in sorted(data.groups.items()):
        m = st.get("metrics") or {}
        healthy, members = m.get("redundancy.healthy"), m.get("redundancy.members")
        if isinstance(healthy, int) and isinstance(members, int):
            need = m.get("redundancy.min")
            crit = f"{need}:" if isinstance(need, int) else ""
            perf.append(f"{_perf_label(f'group {gid} healthy')}={healthy};;{crit};0;{members}")
    text = summary_line(site, verdict, data).replace("|", "/")
    return f"{text} | {' '.join(perf)}"


def _resolve_config(args: argparse.Namespace) -> str | None:
    """`-c` if given; else the default site file, unless `--site` says which site and the default
    file is not there (a check run from a box with no site file of its own)."""
    from facility_agent.cli.main import DEFAULT_CONFIG

    if args.config:
        return str(args.config)
    if args.site and not Path(DEFAULT_CONFIG).exists():
        return None
    return DEFAULT_CONFIG


def cmd_status(args: argparse.Namespace) -> int:
    from facility_agent.config.site import ConfigError, load_site

    host, port, prefix, site = args.mqtt_host, args.mqtt_port, args.mqtt_prefix, args.site
    username = password = None
    tls = None
    config = _resolve_config(args)
    if config:
        try:
            cfg = load_site(config)
            cfg_site, mqtt_cfg = cfg.site, cfg.mqtt
        except ConfigError as exc:
            # A file being edited (or refused by a reload) must not blind the check: its site
            # id and mqtt section are enough to read the running agent's state.
            found = _site_and_mqtt(config)
            if found is None:
                problems = "; ".join(str(p) for p in exc.problems)
                print(f"FACILITY UNKNOWN - {exc.source}: {problems}", flush=True)
                if not args.config and not args.site:
                    print("give -c SITE.yaml, or --site ID (and --mqtt-host/--mqtt-port)")
                return UNKNOWN
            cfg_site, mqtt_cfg = found
        site = site or cfg_site
        if mqtt_cfg is not None:
            host = host or mqtt_cfg.host
            port = port or mqtt_cfg.port
            prefix = prefix or mqtt_cfg.prefix
            username = mqtt_cfg.username
            password = mqtt_cfg.password.get_secret_value() if mqtt_cfg.password else None
            tls = mqtt_cfg.tls
    if not site:
        print("FACILITY UNKNOWN - give -c SITE.yaml or --site ID (and --mqtt-host/--mqtt-port)")
        return UNKNOWN
    data = fetch(
        host or "127.0.0.1",
        port or 1883,
        f"{prefix or 'facility'}/{site}",
        username=username,
        password=password,
        tls=tls,
        timeout=args.timeout,
    )
    verdict = judge(data, stale=args.stale)
    fmt = args.format
    if fmt == "auto":
        fmt = "table" if sys.stdout.isatty() else "plain"
    try:
        if fmt == "json":
            doc = orjson.dumps(as_json(site, verdict, data), option=orjson.OPT_INDENT_2)
            sys.stdout.write(doc.decode() + "\n")
        elif fmt == "nagios":
            print(nagios_line(site, verdict, data))
        elif fmt == "plain":
            print("\n".join(plain_lines(site, verdict, data)))
        else:
            render(site, verdict, data)
        sys.stdout.flush()
    except BrokenPipeError:
        # `status | head -1`: the reader has what it wanted; the verdict stands.
        from facility_agent.cli.main import _quiet_stdout

        _quiet_stdout()
    return verdict.code


def add_parser(command: AddCommand) -> None:
    from facility_agent.cli.main import DEFAULT_CONFIG, positive_float

    what = (
        "the site at a glance from the agent's retained MQTT state; exit 0 OK, 1 WARNING, "
        "2 CRITICAL, 3 UNKNOWN, usage errors 3 (monitoring-plugins convention)"
    )
    p = command("status", what, cmd_status)
    p.add_argument(
        "-c",
        "--config",
        help=f"site file: its site id and mqtt settings [{DEFAULT_CONFIG}, unless --site is "
        "given and that file does not exist]",
    )
    p.add_argument("--site", help="site id (the site file's `site:`) [the site file's]")
    p.add_argument(
        "--mqtt-host",
        "--host",  # old spelling
        metavar="HOST",
        help="MQTT broker [the site file's, else 127.0.0.1]",
    )
    p.add_argument(
        "--mqtt-port",
        "--port",  # old spelling
        metavar="PORT",
        type=int,
        help="MQTT port [the site file's, else 1883]",
    )
    p.add_argument(
        "--mqtt-prefix",
        "--prefix",  # old spelling
        metavar="PREFIX",
        help="topic prefix [the site file's, else facility]",
    )
    p.add_argument(
        "--format",
        choices=["auto", "table", "plain", "nagios", "json"],
        default="auto",
        help="table (a terminal), plain (full-width lines; what a pipe gets under auto), nagios "
        "(one line with perfdata) or json [auto]",
    )
    p.add_argument(
        "--json", action="store_const", const="json", dest="format", help="= --format json"
    )
    p.add_argument(
        "--timeout", type=positive_float, default=3.0, help="seconds to wait for the broker"
    )
    p.add_argument(
        "--stale",
        type=positive_float,
        default=180.0,
        help="a state older than this is a WARNING [180 s]",
    )
