"""Run a configured command: an argv list straight to exec, never through a shell.

Whatever a device said (a UPS model string, a reason) reaches the command only as data: the
event as JSON on stdin and in `FACILITY_*` environment variables, never in its argv. A command
that hangs is killed with its whole process group at its timeout.

A command does not inherit the agent's environment, which holds the site's secrets
(`MATRIX_PW`, `INFLUX_TOKEN` ...): it gets PATH, HOME, TZ, LANG and LC_*, the event's `FACILITY_*`
variables, and only the agent variables its own `env:` key names. What it prints is kept with
the site's secrets masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from facility_agent.runtime.redact import redact

#: How much of a hook's stdout/stderr is kept for the log and the outcome event.
OUTPUT_TAIL = 2000
#: Agent variables every command gets (and every LC_*): what a program needs to find its
#: tools and speak the site's language and time, nothing that could hold a secret.
BASE_ENV = ("PATH", "HOME", "TZ", "LANG")


@dataclass(frozen=True, slots=True)
class HookResult:
    argv: tuple[str, ...]
    returncode: int | None
    duration: float
    timed_out: bool
    output: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None

    def describe(self) -> str:
        if self.error:
            return f"could not run: {self.error}"
        if self.timed_out:
            return f"killed after its {self.duration:.1f} s timeout"
        return f"exit {self.returncode} after {self.duration:.2f} s"


def event_environment(event: Mapping[str, Any] | None) -> dict[str, str]:
    """`FACILITY_EVENT_TYPE`, `FACILITY_DEVICE` ... : the event's top-level fields as text."""
    env: dict[str, str] = {}
    for key, value in (event or {}).items():
        if isinstance(value, str | int | float | bool):
            name = "FACILITY_" + ("EVENT_" + key if key in ("id", "type", "ts") else key).upper()
            env[name] = str(value).replace("\0", "")
    return env


def command_environment(
    event: Mapping[str, Any] | None = None,
    pass_env: Iterable[str] = (),
    source: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of a hook or `run:` step: BASE_ENV, LC_*, the names in `pass_env`
    (from the agent's environment, when set there), then the event's `FACILITY_*`."""
    source = os.environ if source is None else source
    named = set(pass_env)
    env = {
        key: value
        for key, value in source.items()
        if key in BASE_ENV or key.startswith("LC_") or key in named
    }
    env.setdefault("PATH", os.defpath)
    env.update(event_environment(event))
    return env


async def run_hook(
    argv: Sequence[str],
    *,
    timeout: float,
    event: Mapping[str, Any] | None = None,
    pass_env: Iterable[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> HookResult:
    """Run `argv` with the event on stdin; never raises for the command's own failures.

    `pass_env` names the agent variables the command may see (its `env:` key); `extra_env`
    sets variables outright."""
    started = time.monotonic()
    payload = orjson.dumps(dict(event or {}))
    env = {**command_environment(event, pass_env), **(extra_env or {})}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            # Its own process group, so a timeout kills what it started too, and a crash of
            # the agent does not take a half-done hook down with it.
            start_new_session=True,
        )
    except OSError as exc:
        return HookResult(tuple(argv), None, time.monotonic() - started, False, "", str(exc))
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate(payload)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out = b""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                out, _ = await proc.communicate()
        return HookResult(
            tuple(argv), proc.returncode, time.monotonic() - started, True, _tail(out)
        )
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return HookResult(tuple(argv), proc.returncode, time.monotonic() - started, False, _tail(out))


def _tail(out: bytes | None) -> str:
    """The end of the output, any secret masked: it goes into events, logs and the journal,
    and a hook given a secret through `env:` may well print it in an error."""
    text = redact((out or b"").decode(errors="replace"))
    return text[-OUTPUT_TAIL:]
