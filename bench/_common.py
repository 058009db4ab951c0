"""Shared helpers of the benchmarks: processes stopped by PID, a real upsd with dummy-ups, stats.

The processes and the NUT server are the tests' (tests/fixtures/procs.py, tests/fixtures/nut.py:
the PEERS.md recipes), so a benchmark measures the very peers the tests prove.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
PYTHON = sys.executable

sys.path.insert(0, str(REPO))

from tests.fixtures.nut import NutServer, dev_text, start_nut  # noqa: E402
from tests.fixtures.procs import Proc, free_port, wait_until  # noqa: E402, F401 (for the benchmarks)

UPSMON = "/lib/nut/upsmon"
MONITOR_USER = ("monuser", "monpass")


def require(path: str) -> str:
    found = path if os.path.isabs(path) else shutil.which(path)
    if not found or not os.access(found, os.X_OK):
        raise SystemExit(f"required binary {path!r} is missing: run scripts/bootstrap")
    return found


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, from /proc (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --------------------------------------------------------------------------------------------
# A real upsd with dummy-ups drivers
# --------------------------------------------------------------------------------------------


class DummyUpsd:
    """The tests' upsd + one dummy-ups per UPS (tests/fixtures/nut.py), every UPS the same
    model, serials SN-0001 on."""

    def __init__(self, root: Path, upses: tuple[str, ...]) -> None:
        self.root = root
        self.upses = upses
        self.server: NutServer | None = None

    @property
    def nut(self) -> NutServer:
        assert self.server is not None, "DummyUpsd.start() first"
        return self.server

    @property
    def port(self) -> int:
        return self.nut.port

    @property
    def upsd_pid(self) -> int:
        assert self.nut.upsd is not None
        return self.nut.upsd.pid

    def start(self) -> None:
        devs = {u: dev_text(f"SN-{i:04d}", "Dummy 1500", "23") for i, u in enumerate(self.upses, 1)}
        self.server = start_nut(self.root, devs)

    def set_status(self, ups: str, status: str) -> float:
        """Rewrite the .dev file with a new whole-second mtime, not waiting for upsd to see it.

        Returns time.time() right after the rename: the instant the new state exists.
        """
        self.nut.set_state(ups, status, wait=False)
        return time.time()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


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


BENCH_DOC = REPO / "docs" / "benchmarks.md"


def put_section(tag: str, title: str, lines: Sequence[str], doc: Path = BENCH_DOC) -> str:
    """Put a `## title` section of `lines` in place of the one between `<!-- tag:start -->`
    and `<!-- tag:end -->` in `doc`, or at its end: each benchmark rewrites only its own
    section. Returns the section."""
    start, end = f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"
    body = "\n".join(lines).strip("\n")
    section = f"{start}\n## {title}\n\n{body}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)
    return section


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
