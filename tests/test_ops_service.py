"""The service face: the unit file verified by systemd itself, install-service, sd_notify and
the watchdog observed on a real AF_UNIX datagram socket, and the log formats."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from facility_agent.cli.install_service import bundled_unit
from facility_agent.runtime.logfmt import JournalFormatter, JsonFormatter
from facility_agent.runtime.sdnotify import Notifier
from facility_agent.simulators.serve import RunningSimulator
from tests.fixtures.procs import Proc, free_port, require_binary, wait_until

ROOT = Path(__file__).resolve().parent.parent
CONSOLE = Path(sys.executable).parent / "facility-agent"


class NotifySocket:
    """What systemd would be: a datagram socket recording (time, message) pairs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.got.append((time.monotonic(), line))

    def times(self, message: str) -> list[float]:
        return [t for t, m in list(self.got) if m == message]

    def wait_for(self, message: str, timeout: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.times(message)) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"{message} x{count} not seen in {timeout} s: {self.got[-10:]}")

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    tool = require_binary("systemd-analyze")
    return subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_bundled_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # The shipped unit, with ExecStart pointing at this venv's real console script (verify
    # checks that the program exists and is executable); every other line as shipped.
    text = bundled_unit()
    assert "ExecStart=/usr/local/bin/facility-agent run -c /etc/facility-agent/site.yaml" in text
    unit = tmp_path / "facility-agent.service"
    unit.write_text(text.replace("/usr/local/bin/facility-agent", str(CONSOLE)))
    out = verify(unit)
    assert out.returncode == 0, out.stderr
    # systemd only warns (exit 0) about unknown or misspelt keys: no output at all is the bar.
    assert out.stderr.strip() == "" and out.stdout.strip() == ""
    for line in (
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/facility-agent",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ProtectHome=yes",
        "StateDirectory=facility-agent",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_RAW",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SupplementaryGroups=dialout",
    ):
        assert line in text.splitlines(), line


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above has teeth: a misspelt key is reported."""
    unit = tmp_path / "facility-agent.service"
    text = bundled_unit().replace("/usr/local/bin/facility-agent", str(CONSOLE))
    unit.write_text(text.replace("PrivateTmp=yes", "PrivatTmp=yes"))
    assert "Unknown key" in verify(unit).stderr


def _open_dir(prefix: str) -> Path:
    """A temp dir every user may enter (pytest's tmp_path is 0700 root: the service user could
    not reach a prefix under it, which is the failure under test, not the setup)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def system_install() -> Iterator[Path]:
    """A `facility-agent` program the service user can run, as the operator guide's
    /opt/facility-agent install would give: a venv of the system Python (not this test's
    interpreter, which may sit in root's home), seeing this checkout's installed packages."""
    base = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    assert base.exists(), f"{base} is needed: a system Python of this test's version"
    root = _open_dir("fa-opt-")
    venv = root / "opt/facility-agent"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_paths()["purelib"])
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (venv / "lib" / ver / "site-packages" / "this-checkout.pth").write_text(
        f"import site; site.addsitedir({str(purelib)!r})\n"
    )
    program = venv / "bin/facility-agent"
    program.write_text(
        f"#!{venv}/bin/python\nimport sys\n"
        "from facility_agent.cli.main import main\nsys.exit(main())\n"
    )
    program.chmod(0o755)
    yield program
    shutil.rmtree(root)


def _as_nobody(*argv: str) -> list[str]:
    return [require_binary("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]


def install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE), "install-service", *args], capture_output=True, text=True, timeout=60
    )


def test_install_service_dry_run_prints_the_unit_and_every_file(system_install: Path) -> None:
    root = _open_dir("fa-root-")
    try:
        dry = install("--prefix", str(root), "--exec-path", str(system_install), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        out = dry.stdout
        assert f"ExecStart={system_install} run -c /etc/facility-agent/site.yaml" in out
        assert "[Service]" in out and "User=facility-agent" in out
        for line in (
            f"would write {root}/etc/systemd/system/facility-agent.service (root:root 0644)",
            f"would write {root}/etc/facility-agent/site.yaml (root:facility-agent 0640",
            f"would create {root}/var/lib/facility-agent (facility-agent:facility-agent 0750",
            f"would create {root}/etc/facility-agent/secrets (root:facility-agent 0750",
        ):
            assert line in out, out
        assert "systemctl enable --now facility-agent" in out
        assert list(root.iterdir()) == []
        # On the real root, a missing user is created first (here only said: a dry run).
        real = install("--exec-path", str(system_install), "--user", "fa-no-such-user", "--dry-run")
        assert real.returncode == 0, real.stderr
        assert (
            "would useradd --system --user-group" in real.stdout
            and "fa-no-such-user" in real.stdout
        )
        assert "User=fa-no-such-user" in real.stdout
    finally:
        shutil.rmtree(root)


def test_install_service_refuses_a_program_its_user_cannot_reach() -> None:
    """A venv in a home directory (pyenv, a user's venv): refused, with the fix, nothing written."""
    root = _open_dir("fa-root-")
    try:
        home = root / "home-of-someone"
        (home / "venv/bin").mkdir(parents=True)
        home.chmod(0o700)
        program = home / "venv/bin/facility-agent"
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
        out = install("--prefix", str(root), "--exec-path", str(program), "--user", "nobody",
                      "--group", "nogroup")  # fmt: skip
        assert out.returncode == 1
        assert f"{home} (mode 0700, owner root:root): nobody may not enter it" in out.stderr
        assert "/usr/bin/python3 -m venv /opt/facility-agent" in out.stderr
        assert "Traceback" not in out.stderr
        assert not (root / "etc").exists()
        # ProtectHome=yes hides /root and /home whatever their modes.
        hidden = install("--prefix", str(root), "--exec-path", "/root/venv/bin/facility-agent")
        assert hidden.returncode == 1 and "ProtectHome=yes hides it" in hidden.stderr
    finally:
        shutil.rmtree(root)


def test_install_service_into_prefix_starts_as_its_user(system_install: Path) -> None:
    """The unit's user can read its site file, write its state and run ExecStart (systemd is not
    PID 1 in this container, so the unit is verified and its command run as the user instead)."""
    root = _open_dir("fa-root-")
    try:
        site = root / "etc/facility-agent/site.yaml"
        site.parent.mkdir(parents=True)
        site.write_text(
            f"site: lab1\nmqtt: {{host: 127.0.0.1, port: {free_port()}}}\n"
            f"devices:\n  - {{id: ups-a, driver: nut, host: 127.0.0.1, port: {free_port()}, "
            "ups: u, interval: 200ms, lost_after: 1}\n"
        )
        site.chmod(0o600)  # as an editor may leave it: install-service puts it right
        out = install("--prefix", str(root), "--exec-path", str(system_install), "--user",
                      "nobody", "--group", "nogroup", "--allow-poweroff")  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert oct(site.stat().st_mode & 0o777) == "0o640" and site.stat().st_gid == 65534
        state = root / "var/lib/facility-agent"
        assert state.stat().st_uid == 65534 and oct(state.stat().st_mode & 0o777) == "0o750"
        unit = root / "etc/systemd/system/facility-agent.service"
        text = unit.read_text()
        assert "User=nobody" in text and "Group=nogroup" in text
        verified = verify(unit)
        # systemd rightly warns about running as `nobody`: the one warning allowed (the test
        # borrows nobody to avoid creating a user on this machine; a site gets its own).
        noise = [ln for ln in verified.stderr.splitlines() if "Special user nobody" not in ln]
        assert verified.returncode == 0 and not "".join(noise).strip(), verified.stderr
        rule = root / "etc/polkit-1/rules.d/50-facility-agent-poweroff.rules"
        assert 'subject.user == "nobody"' in rule.read_text()

        read = subprocess.run(_as_nobody("cat", str(site)), capture_output=True, text=True)
        assert read.returncode == 0 and "site: lab1" in read.stdout, read.stderr
        argv = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))[10:].split()
        assert argv[:3] == [str(system_install), "run", "-c"]
        argv[3] = str(site)  # the same file, seen through the prefix
        env = {"PATH": "/usr/bin:/bin", "STATE_DIRECTORY": str(state)}
        checked = subprocess.run(
            _as_nobody(argv[0], "check", "-c", str(site)), capture_output=True, text=True, env=env
        )
        assert checked.returncode == 0, checked.stderr
        log_path = root / "agent.log"
        with log_path.open("w") as log_file:
            agent = subprocess.Popen(_as_nobody(*argv), stdout=log_file, stderr=log_file, env=env)
        try:
            wait_until(
                lambda: "communication lost" in log_path.read_text() or agent.poll() is not None,
                30,
                "the agent running as the service user",
            )
            assert agent.poll() is None, log_path.read_text()
            written = [p for p in state.rglob("*") if p.is_file()]
            assert written and all(p.stat().st_uid == 65534 for p in written), written
        finally:
            agent.terminate()
            agent.wait(20)
        log = log_path.read_text()
        assert agent.returncode == 0, log
        assert "Permission denied" not in log and "Traceback" not in log
    finally:
        shutil.rmtree(root)


def test_agent_notifies_ready_watchdog_and_stopping(
    tmp_path: Path,
    nut_simulator: RunningSimulator,
    notify_socket: NotifySocket,
    procs: Callable[..., Proc],
) -> None:
    site = tmp_path / "site.yaml"
    device = {"id": "ups-a", "driver": "nut", "host": "127.0.0.1"}
    device |= {"port": nut_simulator.nut_port, "ups": "ups-a", "interval": 1}
    site.write_text(yaml.safe_dump({"site": "wd", "state_dir": str(tmp_path), "devices": [device]}))
    agent = procs(
        [sys.executable, "-m", "facility_agent.cli", "run", "-c", str(site)],
        tmp_path / "agent.log",
        # WATCHDOG_USEC 0.4 s: a keep-alive every 0.2 s.
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"},
    )
    notify_socket.wait_for("READY=1", 20)
    notify_socket.wait_for("WATCHDOG=1", 10, count=8)
    beats = notify_socket.times("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) < 1.5, gaps  # generous: two shared cores
    assert any(m.startswith("STATUS=site wd: 1 device(s)") for _, m in notify_socket.got)
    agent.stop()
    notify_socket.wait_for("STOPPING=1", 5)
    assert agent.popen.returncode == 0, agent.output()
    ready = notify_socket.times("READY=1")[0]
    stopping = notify_socket.times("STOPPING=1")[0]
    assert ready < stopping


async def test_hung_loop_stops_the_keepalives(notify_socket: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"})
    assert notifier.watchdog_interval == pytest.approx(0.1)
    task = asyncio.create_task(notifier.watchdog())
    await asyncio.sleep(0.8)
    hung_at = time.monotonic()
    # The test hook: the event loop is blocked, as by a hung call.
    time.sleep(1.5)  # noqa: ASYNC251
    await asyncio.sleep(0.6)
    task.cancel()
    notifier.close()
    await asyncio.sleep(0.1)
    beats = notify_socket.times("WATCHDOG=1")
    before = [b for b in beats if b < hung_at]
    after = [b for b in beats if b > hung_at]
    assert len(before) >= 3 and after, beats
    # Nothing while the loop was blocked: the gap spans the hang (systemd would kill us).
    assert after[0] - before[-1] >= 1.4
    assert not [b for b in beats if hung_at + 0.05 < b < hung_at + 1.45]


def test_notifier_without_systemd_is_silent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.send("READY=1") is False
    # Abstract socket names (`@...`) are understood.
    assert Notifier({"NOTIFY_SOCKET": "@/org/x"}).address == "\0/org/x"
    # The watchdog belongs to the main process only.
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_log_formats_carry_device_and_event() -> None:
    record = logging.LogRecord(
        "facility_agent.runtime.agent", logging.ERROR, "x", 1, "ups-a lost", (), None
    )
    record.device = "ups-a"
    record.event_id = "01JTEST"
    record.event_type = "device.comm_lost"
    line = JournalFormatter().format(record)
    assert line.startswith("<3>ERROR runtime.agent: ups-a lost")
    assert "device=ups-a event=01JTEST type=device.comm_lost" in line
    body = json.loads(JsonFormatter().format(record))
    assert body["level"] == "error" and body["device"] == "ups-a" and body["event"] == "01JTEST"
    assert body["message"] == "ups-a lost" and body["type"] == "device.comm_lost"


def test_run_logs_json_when_asked(tmp_path: Path) -> None:
    """--log-format json: every line of a failing start is one JSON object."""
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"site": "js", "state_dir": str(tmp_path), "devices": []}))
    out = subprocess.run(
        [str(CONSOLE), "--log-format", "json", "check", "-c", str(site)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    proc = subprocess.Popen(
        [str(CONSOLE), "--log-format", "json", "run", "-c", str(site)],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.0)
    proc.terminate()
    _, err = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(x) for x in lines)
    assert any("started" in x["message"] for x in lines)
