"""Fixture modules live in tests/fixtures/, one per peer, so they can be read on their own."""

import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures.procs",
    "tests.fixtures.nut",
    "tests.fixtures.mosquitto",
    "tests.fixtures.simulator",
    "tests.fixtures.modbus",
    "tests.fixtures.snmp",
    "tests.fixtures.ipmi",
    "tests.fixtures.outputs",
]


@pytest.fixture(autouse=True)
def _isolated_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test gets its own state directory (journal, outbox) unless its site file names one.

    Without this, every agent a test starts with site `lab1` and no `state_dir` would share
    /var/lib/facility-agent/lab1: the outbox one test's killed agent left would be replayed into
    the next test's broker. Agents started as subprocesses inherit the variable.
    """
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path_factory.mktemp("state")))


#: How long the session's end waits for threads that are still finishing their work.
THREADS_GRACE = 10.0
_leftover: list[str] = []


def _lingering() -> list[threading.Thread]:
    """Threads that would keep the interpreter from exiting: non-daemon ones, and the
    concurrent.futures workers that Python joins at exit (daemon or not)."""
    from concurrent.futures import thread as cft

    joined = set(getattr(cft, "_threads_queues", {}))
    return [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and (not t.daemon or t in joined)
    ]


def _describe(threads: list[threading.Thread]) -> list[str]:
    frames = sys._current_frames()
    out = []
    for t in threads:
        frame = frames.get(t.ident or -1)
        stack = "".join(traceback.format_stack(frame)[-6:]) if frame else "  (no frame)\n"
        out.append(f"thread {t.name!r} (daemon={t.daemon}) still alive at:\n{stack}")
    return out


@pytest.fixture(scope="session", autouse=True)
def _no_threads_left() -> Iterator[None]:
    """Fail the run loudly, naming them, when threads outlive every test.

    Python joins such threads at exit, so one stuck in a library would hang the test process
    forever after its summary (issue 15). This fails instead, and `pytest_unconfigure` then
    ends the process without waiting for them."""
    yield
    deadline = time.monotonic() + THREADS_GRACE
    while (alive := _lingering()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive:
        _leftover.extend(_describe(alive))
        pytest.fail(
            f"{len(alive)} thread(s) still alive after the last test:\n" + "\n".join(_leftover),
            pytrace=False,
        )


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _leftover:
        # The summary is out; do not let the threads above keep the process (and CI) waiting.
        sys.stderr.write("tests/conftest.py: exiting without joining the threads named above\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
