"""Shared helpers of the benchmarks: processes stopped by PID, a real upsd with dummy-ups, stats.

Nothing here imports from tests/: the NUT recipe is the one of PEERS.md (run /lib/nut/* directly
with `-F -u root`, NUT_CONFPATH/NUT_STATEPATH in a scratch dir, wait for a real `OL`, rewrite a
`.dev` file with a new whole-second mtime).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
PYTHON = sys.executable

DUMMY_UPS = "/lib/nut/dummy-ups"
UPSD = "/lib/nut/upsd"
UPSMON = "/lib/nut/upsmon"
MONITOR_USER = ("monuser", "monpass")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{what} not ready after {timeout} s")


def require(path: str) -> str:
    found = path if os.path.isabs(path) else shutil.which(path)
    if not found or not os.access(found, os.X_OK):
        raise SystemExit(f"required binary {path!r} is missing: run scripts/bootstrap")
    return found


class Proc:
    """A background process, output to a log file, in its own session; stopped by its PID."""

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self._logf = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE if stdout_pipe else self._logf,
            stderr=self._logf if stdout_pipe else subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._logf.close()

    def output(self) -> str:
        self._logf.flush()
        return self.log.read_text(errors="replace")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, from /proc (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --------------------------------------------------------------------------------------------
# A real upsd with dummy-ups drivers
# --------------------------------------------------------------------------------------------


def dev_text(ups: str, index: int) -> str:
    return (
        "device.mfr: DummyCorp\n"
        "device.model: Dummy 1500\n"
        "ups.mfr: DummyCorp\n"
        "ups.model: Dummy 1500\n"
        f"ups.serial: SN-{index:04d}\n"
        "ups.status: OL\n"
        "ups.load: 23\n"
        "ups.realpower.nominal: 1500\n"
        "battery.charge: 100\n"
        "battery.charge.low: 20\n"
        "battery.runtime: 3600\n"
        "battery.voltage: 27.1\n"
        "input.voltage: 230.4\n"
        "input.frequency: 50.0\n"
        "output.voltage: 230.0\n"
        "ups.temperature: 28.5\n"
    )


@dataclass
class DummyUpsd:
    """upsd + one dummy-ups per UPS on a free loopback port (pollinterval 1, as in PEERS.md)."""

    root: Path
    upses: tuple[str, ...]
    port: int = 0
    procs: list[Proc] = field(default_factory=list)

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def env(self) -> dict[str, str]:
        return {"NUT_CONFPATH": str(self.etc), "NUT_STATEPATH": str(self.root / "state")}

    def dev_file(self, ups: str) -> Path:
        return self.etc / f"{ups}.dev"

    def upsc_var(self, ups: str, var: str) -> str:
        out = subprocess.run(
            ["upsc", f"{ups}@127.0.0.1:{self.port}", var],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip()

    def start(self) -> None:
        for binary in (DUMMY_UPS, UPSD, "upsc"):
            require(binary)
        self.port = self.port or free_port()
        state = self.root / "state"
        state.mkdir(parents=True, exist_ok=True)
        state.chmod(0o700)
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "ups.conf").write_text(
            f"statepath = {state}\npollinterval = 1\n"
            + "".join(
                f'[{u}]\n  driver = dummy-ups\n  port = {self.dev_file(u)}\n  desc = "Dummy {u}"\n'
                for u in self.upses
            )
        )
        (self.etc / "upsd.conf").write_text(
            f"LISTEN 127.0.0.1 {self.port}\nSTATEPATH {state}\nMAXAGE 15\n"
        )
        users = self.etc / "upsd.users"
        users.write_text(
            "[admin]\n  password = adminpass\n  actions = SET\n  instcmds = ALL\n"
            f"[{MONITOR_USER[0]}]\n  password = {MONITOR_USER[1]}\n  upsmon primary\n"
        )
        users.chmod(0o640)
        for i, ups in enumerate(self.upses, 1):
            self.dev_file(ups).write_text(dev_text(ups, i))
            (state / f"dummy-ups-{ups}").unlink(missing_ok=True)
            self.procs.append(
                Proc(
                    [DUMMY_UPS, "-a", ups, "-F", "-u", "root"],
                    self.root / f"drv-{ups}.log",
                    cwd=self.root,
                    env=self.env,
                )
            )
        sockets = [state / f"dummy-ups-{u}" for u in self.upses]
        wait_until(lambda: all(s.is_socket() for s in sockets), 10, "dummy-ups sockets")
        self.procs.append(
            Proc([UPSD, "-F", "-u", "root"], self.root / "upsd.log", self.root, self.env)
        )
        for ups in self.upses:
            self.wait_status(ups, "OL", 20)

    def wait_status(self, ups: str, status: str, timeout: float) -> None:
        wait_until(lambda: self.upsc_var(ups, "ups.status") == status, timeout, f"{ups} {status}")

    def set_status(self, ups: str, status: str) -> float:
        """Rewrite the .dev file (temp + rename) with a new whole-second mtime.

        Returns time.time() right after the rename: the instant the new state exists.
        """
        path = self.dev_file(ups)
        lines = [
            f"ups.status: {status}" if line.startswith("ups.status:") else line
            for line in path.read_text().splitlines()
        ]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        old = int(path.stat().st_mtime)
        new = max(int(time.time()), old + 1)
        os.utime(tmp, (new, new))
        tmp.replace(path)
        return time.time()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "median": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "max": max(values),
    }


def pkg_version(name: str) -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, timeout=5
        )
    except OSError:
        return "?"
    return out.stdout.strip() or "not installed"


def machine_info() -> dict[str, Any]:
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "loadavg": load,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nut-server": pkg_version("nut-server"),
        "nut-client": pkg_version("nut-client"),
        "mosquitto": pkg_version("mosquitto"),
    }


def save_result(name: str, data: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def bench_site_yaml(ups_names: Sequence[str]) -> str:
    """A simulated site whose UPS units are fed straight from the utility (no generator, no ATS):
    `utility.fail` puts every UPS on battery at once, `utility.restore` back on line at once, so
    no transfer delay of the model is counted."""
    lines = ["name: bench-site", "utility: {voltage: 230.0, frequency: 50.0}", "ups:"]
    for i, name in enumerate(ups_names, 1):
        lines.append(
            f"  - {{name: {name}, input: utility, serial: BENCH-{i:04d}, battery_wh: 400}}"
        )
    return "\n".join(lines) + "\n"
