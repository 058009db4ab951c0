"""What the vm:/containers: steps share: the per-target journal, priority groups, and the
result of a step over many targets.

Each target is journaled `stopping` before it is asked to stop and `stopped` (or `failed`)
after, in the plan's own journal. That is what makes these steps safe to run again after the
agent died in the middle of one (targets behind it are not asked again, the one in the middle
is asked again, which is a no-op for a guest or container already off) and what lets recovery
start again only what this plan stopped.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from facility_agent.runtime.redact import redact

if TYPE_CHECKING:
    from facility_agent.policy.journal import Journal

STOPPED = ("stopped", "stopping")


class TargetLog:
    """The journal rows of one step's targets; in memory only when there is no journal."""

    def __init__(
        self,
        journal: Journal | None,
        position: tuple[int, int, int] | None,
        scope: str | None = None,
    ) -> None:
        self.journal = journal if position is not None else None
        self.position = position
        #: The key prefix of this step's targets in the journal's `timings` (`vm <uri>`); None:
        #: their times are not learned (recovery's starts).
        self.scope = scope
        self._memory: dict[str, str] = {}

    def states(self) -> dict[str, str]:
        if self.journal is None or self.position is None:
            return dict(self._memory)
        return dict(self.journal.targets(self.position))

    def mark(self, target: str, state: str, duration: float | None = None) -> None:
        if self.journal is None or self.position is None:
            self._memory[target] = state
            return
        self.journal.target_mark(self.position, target, state, duration)
        if state == "stopped" and duration is not None:
            self.timed(target, duration)

    def stopped(self, target: str, since: float) -> float:
        """Journal `target` stopped, asked at monotonic time `since`; returns what it took."""
        took = time.monotonic() - since
        self.mark(target, "stopped", took)
        return took

    def timed(self, target: str, duration: float) -> None:
        """Journal what a target took, for the plan's learned duration (policy/durations.py)."""
        if self.journal is not None and self.position is not None and self.scope is not None:
            self.journal.target_time(self.position, f"{self.scope} {target}", duration)


def public_uri(uri: str) -> str:
    """The URI without a password in it, for messages."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "<unparsable URI>"
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def stopped_by(journal: Journal, position: tuple[int, int, int]) -> list[str]:
    """The targets a step stopped (or was stopping when the agent died), in stop order."""
    return [t for t, state in journal.targets(position) if state in STOPPED]


def groups(names: Iterable[str], patterns: Sequence[str]) -> list[list[str]]:
    """Names matched by each pattern (a name or a glob), each name in its first group only."""
    pool = sorted(set(names))
    seen: set[str] = set()
    out: list[list[str]] = []
    for pattern in patterns:
        group = [n for n in pool if n not in seen and fnmatch.fnmatchcase(n, pattern)]
        seen.update(group)
        out.append(group)
    return out


def is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


@dataclass
class Tally:
    """The outcome of a step over its targets: one line each, ok only if every one is."""

    what: str
    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def ok(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, target: str, line: str) -> None:
        self.failed.append(target)
        self.lines.append(line)

    def result(self, empty: str) -> tuple[bool, str]:
        body = "; ".join(self.lines) if self.lines else empty
        head = f"{self.what}: " if self.what else ""
        if self.failed:
            head += f"FAILED {', '.join(self.failed)}: "
        return not self.failed, redact(head + body)


def skip_stopped(before: Mapping[str, str], tally: Tally) -> list[str]:
    """The targets the journal says this plan already stopped (before a restart): never asked
    again, even if one runs again by now."""
    behind = [name for name, state in before.items() if state == "stopped"]
    if behind:
        tally.ok(f"already stopped before a restart: {', '.join(behind)}")
    return behind


async def stop_together(
    group: Sequence[str],
    stop_one: Callable[[str], Awaitable[str]],
    tally: Tally,
    describe: Callable[[BaseException], str] = str,
) -> list[str | BaseException]:
    """Stop one priority group's targets in parallel; each outcome goes to the tally."""
    results = await asyncio.gather(*(stop_one(name) for name in group), return_exceptions=True)
    for name, result in zip(group, results, strict=True):
        if isinstance(result, asyncio.CancelledError):
            raise result
        if isinstance(result, BaseException):
            tally.fail(name, describe(result))
        else:
            tally.ok(result)
    return results


def settle_interrupted(
    before: Mapping[str, str], running: set[str], log: TargetLog, tally: Tally
) -> None:
    """A target journaled `stopping` by an agent that died, and not running now, went off
    while the agent was down: journaled `stopped`."""
    for name, state in before.items():
        if state == "stopping" and name not in running:
            log.mark(name, "stopped")
            tally.ok(f"{name} off after a restart")


async def start_each(
    names: Sequence[str],
    start_one: Callable[[str], Awaitable[bool]],
    log: TargetLog,
    tally: Tally,
    errors: tuple[type[Exception], ...],
    describe: Callable[[Exception], str],
) -> None:
    """Recovery: start `names` (already in reverse stop order) one after another. `start_one`
    says whether the target was running already; one journaled `started` (by an agent that
    died) is not asked again, and one that fails does not keep the others down."""
    for name in names:
        if log.states().get(name) == "started":
            continue
        log.mark(name, "starting")
        started = time.monotonic()
        try:
            was_running = await start_one(name)
        except errors as exc:
            log.mark(name, "failed")
            tally.fail(name, f"{name}: {describe(exc)}")
            continue
        took = time.monotonic() - started
        tally.ok(f"{name} already running" if was_running else f"{name} started in {took:.1f} s")
        log.mark(name, "started", took)
