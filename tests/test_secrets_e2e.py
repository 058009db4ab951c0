"""No secret leaves the agent: `facility-agent --log-level debug run` as its own process, every
output and every authenticated device configured with distinct known secrets, through an outage.

Real peers only: mosquitto with a password file, VictoriaMetrics behind an InfluxDB token,
aiosmtpd requiring AUTH for an apprise `mailto://user:password@` route, the Prometheus endpoint,
NUT's upsd with a LOGIN account, net-snmp's snmpd with an SNMPv3 user (auth and priv keys),
OpenIPMI's ipmi_sim with an admin password, and an SNMP trap listener with its community and v3
keys. Each peer only answers when the agent used the secret, so the test first proves each
secret was used, then searches every log line, MQTT topic and payload, the hooks' and steps'
output, the `status` output, the runbook and the `/metrics` body for each secret in each
spelling (as is, quote/quote_plus, upper- and lowercase hex): 0 hits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.fixtures import ipmi as ipmi_fixture
from tests.fixtures.mosquitto import Broker, Collector
from tests.fixtures.nut import NutServer, start_nut
from tests.fixtures.outputs import Victoria
from tests.fixtures.procs import Proc, free_port, require_binary
from tests.fixtures.snmp import running_snmpd
from tests.fixtures.waiting import until

CONSOLE = Path(sys.executable).parent / "facility-agent"

#: Every secret of the site: each holds characters that URL-encode, so each spelling differs.
SECRETS = {
    "mqtt": "mq@tt/pw+1 x",
    "influx": "infl@x/tok+2=",
    "smtp": "sm&tp/pw+3?",
    "nut": "n@ut/pw+4",
    "snmp_auth": "sn@mp/auth+5",
    "snmp_priv": "sn@mp/priv+6",
    "ipmi": "ip@mi/pw+7",
    "trap_community": "tr@p/comm+8",
    "trap_auth": "tr@p/auth+9x",
    #: A webhook token in a URL path (as Slack, Discord, Home Assistant webhooks have them):
    #: apprise and urllib3 log that path at debug, partly escaped.
    "webhook": "wh@ok/tok+10 z",
}
SNMP_USER = "facsec"


def spellings(value: str) -> set[str]:
    out = {value}
    for safe in ("", "/"):
        out |= {urllib.parse.quote(value, safe=safe), urllib.parse.quote_plus(value, safe=safe)}
    return out | {s.lower() for s in out if "%" in s}


def leaks(text: str, secrets: dict[str, str]) -> list[tuple[str, str]]:
    """Each secret in each spelling; decoding the text first finds partly escaped ones too."""
    texts = (text, urllib.parse.unquote(text), urllib.parse.unquote_plus(text))
    return sorted(
        {(name, s) for name, v in secrets.items() for s in spellings(v) for t in texts if s in t}
    )


# -- peers whose credentials are the test's ----------------------------------------------------


def start_broker(root: Path, user: str, password: str) -> Broker:
    root.mkdir()
    passwd = root / "passwd"
    passwd.touch(mode=0o600)
    subprocess.run(
        [require_binary("mosquitto_passwd"), "-b", str(passwd), user, password],
        check=True,
        capture_output=True,
    )
    port = free_port()
    conf = root / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous false",
        f"password_file {passwd}",
        "persistence false",
        "log_dest stderr",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    broker = Broker(root, port, conf)
    broker.start()
    return broker


def start_nut_with(root: Path, user: str, password: str) -> NutServer:
    server = start_nut(root)
    (server.etc / "upsd.users").write_text(
        f'[{user}]\n  password = "{password}"\n  upsmon primary\n'
    )
    server.restart_upsd()
    return server


def start_snmpd(root: Path, auth: str, priv: str) -> tuple[Callable[[], None], int]:
    """snmpd with only the v3 user (no community): its stop, and its port."""
    root.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    conf = (
        f"agentAddress udp:127.0.0.1:{port}\n"
        "sysName secrets-snmpd\n"
        f'createUser {SNMP_USER} SHA "{auth}" AES "{priv}"\n'
        f"rouser {SNMP_USER} priv\n"
        "master off\n"
    )
    v3 = ["-v3", "-l", "authPriv", "-u", SNMP_USER, "-a", "SHA", "-A", auth]
    v3 += ["-x", "AES", "-X", priv]
    snmpd = contextlib.ExitStack()
    snmpd.enter_context(running_snmpd(root, port, conf, v3))
    return snmpd.close, port


class Webhook:
    """A plain HTTP receiver for apprise's json:// route (stdlib server in a thread)."""

    def __init__(self) -> None:
        import http.server

        hook = self
        self.paths: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.paths.append(self.path)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd that requires AUTH with the test's password (plain, on loopback)."""

    def __init__(self, port: int, password: str) -> None:
        self.port = port
        self.password = password
        self.mails: list[bytes] = []
        self.logins: list[bool] = []
        self.controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        box = self

        def authenticator(server: Any, session: Any, envelope: Any, mech: str, data: Any) -> Any:
            ok = isinstance(data, LoginPassword) and data.password.decode() == box.password
            box.logins.append(ok)
            return AuthResult(success=ok)

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                box.mails.append(envelope.content)
                return "250 OK"

        self.controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=False,
        )
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[dict[str, Any]]:
    started: list[Callable[[], None]] = []
    try:
        broker = start_broker(tmp_path / "mqtt", "agent", SECRETS["mqtt"])
        started.append(broker.stop)
        vm = Victoria(tmp_path / "vm", free_port())
        vm.root.mkdir()
        vm.start()
        started.append(vm.stop)
        box = Mailbox(free_port(), SECRETS["smtp"])
        box.start()
        started.append(box.stop)
        hook = Webhook()
        started.append(hook.stop)
        nut = start_nut_with(tmp_path / "nut", "monuser", SECRETS["nut"])
        started.append(nut.stop)
        stop_snmpd, snmp_port = start_snmpd(
            tmp_path / "snmpd", SECRETS["snmp_auth"], SECRETS["snmp_priv"]
        )
        started.append(stop_snmpd)
        mp = pytest.MonkeyPatch()
        mp.setattr(ipmi_fixture, "ADMIN", ("admin", SECRETS["ipmi"]))
        try:
            bmc = ipmi_fixture.start_ipmi_sim(tmp_path / "bmc")
        finally:
            mp.undo()
        started.append(bmc.stop)
        yield {"broker": broker, "vm": vm, "mail": box, "nut": nut, "snmp_port": snmp_port,
               "webhook": hook, "bmc": bmc}  # fmt: skip
    finally:
        for stop in reversed(started):
            stop()


def env_printer(tmp_path: Path) -> list[str]:
    """A hook/step that prints its whole environment (its output reaches events and logs) and
    appends it to envs.jsonl (unmasked: what the command really got)."""
    script = tmp_path / "printenv.py"
    script.write_text(
        "import json, os, sys\n"
        "sys.stdin.read()\n"
        "env = json.dumps(dict(os.environ))\n"
        f"open({str(tmp_path / 'envs.jsonl')!r}, 'a').write(env + '\\n')\n"
        "print(env)\n"
    )
    return [sys.executable, str(script)]


def write_site(tmp_path: Path, peers: dict[str, Any], prom_port: int, trap_port: int) -> Path:
    (tmp_path / "nut.pw").write_text(SECRETS["nut"] + "\n")
    smtp = urllib.parse.quote(SECRETS["smtp"], safe="")
    url = (
        f"mailto://ops:{smtp}@127.0.0.1:{peers['mail'].port}"
        "?from=agent@example.com&to=ops@example.com"
    )
    (tmp_path / "notify.url").write_text(url + "\n")
    dumper = env_printer(tmp_path)
    doc: dict[str, Any] = {
        "site": "sec",
        "state_dir": str(tmp_path / "state"),
        "mqtt": {
            "host": "127.0.0.1",
            "port": peers["broker"].port,
            "username": "agent",
            "password": "${MQTT_PASSWORD}",
            "heartbeat": 5,
        },
        "influxdb": {
            "url": peers["vm"].url,
            "token": "${INFLUX_TOKEN}",
            "org": "o",
            "bucket": "b",
            "flush_interval": "500ms",
        },
        "prometheus": {"listen": f"127.0.0.1:{prom_port}"},
        "notify": [
            {
                "url": "${file:notify.url}",
                "name": "mail",
                "min_severity": "warning",
                "group_wait": "200ms",
                "group_interval": "500ms",
            },
            {
                "url": f"json://127.0.0.1:{peers['webhook'].port}/hook/${{WEBHOOK_TOKEN}}",
                "name": "webhook",
                "min_severity": "warning",
                "group_wait": "200ms",
                "group_interval": "500ms",
            },
        ],
        "traps": {
            "listen": f"127.0.0.1:{trap_port}",
            "community": SECRETS["trap_community"],
            "users": [
                {"user": "trapper", "auth_protocol": "SHA", "auth_key": SECRETS["trap_auth"]}
            ],
        },
        "devices": [
            {
                "id": "ups-1",
                "driver": "nut",
                "host": "127.0.0.1",
                "port": peers["nut"].port,
                "ups": "ups1",
                "username": "monuser",
                "password": "${file:nut.pw}",
                "login": True,
                "interval": "1s",
            },
            {
                "id": "snmp-1",
                "driver": "snmp",
                "host": "127.0.0.1",
                "port": peers["snmp_port"],
                "version": "3",
                "user": SNMP_USER,
                "auth_protocol": "SHA",
                "auth_key": "${SNMP_AUTH}",
                "priv_protocol": "AES",
                "priv_key": "${SNMP_PRIV}",
                "profile": "if-mib",
                "interval": "2s",
            },
            {
                "id": "srv-1",
                "driver": "ipmi",
                "host": "127.0.0.1",
                "port": peers["bmc"].port,
                "username": "admin",
                "password": SECRETS["ipmi"],
                "interval": "2s",
            },
        ],
        "groups": [{"id": "power", "kind": "power", "members": ["ups-1"], "hold": "500ms"}],
        "hooks": [{"events": ["*"], "run": dumper, "timeout": "10s"}],
        "shutdown": {
            "group": "power",
            "triggers": {"on_battery_for": "1s", "runtime_margin": None},
            "expected_duration": "5s",
            "stages": [
                {"name": "announce", "steps": [{"run": dumper, "timeout": "10s"}]},
                {"name": "pause", "steps": [{"wait": "1s"}]},
            ],
        },
        "recovery": {"stable_for": "1s", "min_charge": 0, "stages": []},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def agent_env() -> dict[str, str]:
    return {
        "MQTT_PASSWORD": SECRETS["mqtt"],
        "INFLUX_TOKEN": SECRETS["influx"],
        "SNMP_AUTH": SECRETS["snmp_auth"],
        "SNMP_PRIV": SECRETS["snmp_priv"],
        # Written URL-encoded, as it has to be inside the route's URL.
        "WEBHOOK_TOKEN": urllib.parse.quote(SECRETS["webhook"], safe=""),
        "FACILITY_AGENT_LOG_FORMAT": "text",
    }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **agent_env()},
    )


def events(col: Collector) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in col.snapshot("facility/sec/events")]


def state(col: Collector, device: str) -> dict[str, Any] | None:
    got = col.snapshot(f"facility/sec/{device}/state")
    return json.loads(got[-1].payload) if got else None


def comm_ok(col: Collector, device: str) -> bool:
    st = state(col, device)
    return st is not None and st.get("comm") == "ok"


def has(col: Collector, kind: str) -> bool:
    return any(e["type"] == kind for e in events(col))


def scrape(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_no_secret_in_any_output_at_debug(
    tmp_path: Path,
    peers: dict[str, Any],
    procs: Callable[..., Proc],
    mqtt_subscribe: Callable[..., Collector],
) -> None:
    prom_port, trap_port = free_port(), free_port(socket.SOCK_DGRAM)
    site = write_site(tmp_path, peers, prom_port, trap_port)
    col = mqtt_subscribe(peers["broker"], "#", auth=("agent", SECRETS["mqtt"]))
    agent = procs(
        [str(CONSOLE), "--log-level", "debug", "run", "-c", str(site)],
        tmp_path / "agent.log",
        env=agent_env(),
    )
    nut: NutServer = peers["nut"]
    metrics_bodies: list[str] = []
    try:
        # Each secret was used: every peer only answers to the right one.
        for dev in ("ups-1", "snmp-1", "srv-1"):
            await until(lambda d=dev: comm_ok(col, d), 40, f"{dev} comm ok")  # type: ignore[misc]
        nut.set_state("ups1", "OB DISCHRG", charge=80, runtime=1200)
        await until(lambda: has(col, "shutdown.completed"), 40, "shutdown.completed")
        metrics_bodies.append(await asyncio.to_thread(scrape, prom_port))
        nut.set_state("ups1", "OL CHRG", charge=100, runtime=3600)
        await until(lambda: has(col, "power.on_line"), 30, "power.on_line")
        await until(lambda: peers["mail"].mails, 40, "the alert mail")
        await until(lambda: peers["webhook"].paths, 40, "the webhook alert")
        await until(lambda: has(col, "hook.ok"), 20, "a hook outcome")
        await until(lambda: peers["vm"].export('{__name__=~"facility.*"}'), 30, "influx points")
        metrics_bodies.append(await asyncio.to_thread(scrape, prom_port))
        status_plain = await asyncio.to_thread(cli, "status", "-c", str(site))
        status_json = await asyncio.to_thread(cli, "status", "-c", str(site), "--json")
        runbook = await asyncio.to_thread(cli, "runbook", "-c", str(site))
    finally:
        agent.signal(signal.SIGTERM)
        agent.popen.wait(20)
    log = agent.output()
    assert agent.popen.returncode == 0, log[-3000:]
    assert all(peers["mail"].logins) and peers["mail"].logins, "SMTP AUTH with the password"
    assert urllib.parse.unquote(peers["webhook"].paths[0]) == "/hook/" + SECRETS["webhook"]
    assert status_json.returncode in (0, 1, 2), status_json.stderr
    assert json.loads(status_json.stdout)["devices"]["ups-1"]["comm"] == "ok"
    assert runbook.returncode == 0, runbook.stderr
    assert "DEBUG" in log and len(log.splitlines()) > 100  # really at debug
    step = next(
        e for e in events(col) if e["type"] == "shutdown.step" and "printenv" in e["message"]
    )
    assert step["data"]["ok"], step
    assert len((tmp_path / "envs.jsonl").read_text().splitlines()) >= 2  # hooks and the step ran

    surfaces = {
        "agent log": log,
        "mqtt": "\n".join(
            f"{m.topic} {m.payload.decode(errors='replace')}" for m in col.snapshot()
        ),
        "status": status_plain.stdout + status_plain.stderr,
        "status --json": status_json.stdout + status_json.stderr,
        "runbook": runbook.stdout + runbook.stderr,
        "/metrics": "\n".join(metrics_bodies),
        "mail": "\n".join(m.decode(errors="replace") for m in peers["mail"].mails),
        "hook environments": (tmp_path / "envs.jsonl").read_text(),
        "state directory": "\n".join(
            p.read_bytes().decode(errors="replace")
            for p in (tmp_path / "state").rglob("*")
            if p.is_file()
        ),
    }
    assert all(surfaces.values()), [where for where, text in surfaces.items() if not text]
    found = {where: hits for where, text in surfaces.items() if (hits := leaks(text, SECRETS))}
    assert not found, found
