"""Supervision of the agent's long-lived tasks: a task that dies is logged with its traceback and
restarted with back-off, and while it is down the supervisor says so (`/healthz`, the retained
summary that `facility-agent status` reads). A dead task is never silent.

One `Supervisor` per agent; the agent hands it to its sinks (`Sink.attach`) and policy engine.
A sink used on its own (tests, tools) keeps the private supervisor it was built with.
`spawn` returns the supervising task itself, so cancelling it stops the work, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: First and longest wait before a dead task is started again.
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
#: A task that ran this long before it died starts again after BACKOFF_MIN, not longer.
HEALTHY_AFTER = 60.0

Factory = Callable[[], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class TaskHealth:
    """What the supervisor knows of one task (mutated on the loop only)."""

    name: str
    restarts: int = 0
    down_since: float | None = None
    last_error: str | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def payload(self, now: float) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "restarts": self.restarts}
        if self.down_since is not None:
            body["down_for_s"] = round(now - self.down_since, 1)
        if self.last_error is not None:
            body["last_error"] = self.last_error
        return body


class Supervisor:
    def __init__(
        self, *, backoff_min: float = BACKOFF_MIN, backoff_max: float = BACKOFF_MAX
    ) -> None:
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.tasks: dict[str, TaskHealth] = {}
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Called (on the loop) whenever a task goes down or comes back."""
        self._listeners.append(listener)

    def spawn(self, name: str, factory: Factory) -> asyncio.Task[None]:
        """Run `factory()` until it returns or is cancelled, restarting it whenever it raises."""
        health = self.tasks.get(name)
        if health is None:
            health = self.tasks[name] = TaskHealth(name)
        else:
            health.down_since = None
        return asyncio.create_task(self._keep(health, factory), name=name)

    def forget(self, name: str) -> None:
        """A task that is gone on purpose (a device removed by a reload)."""
        if self.tasks.pop(name, None) is not None:
            self._changed()

    def down(self) -> list[TaskHealth]:
        return [h for h in self.tasks.values() if h.down]

    def snapshot(self) -> dict[str, Any]:
        """Plain data for `/healthz` and the summary: tasks down now, and every restart."""
        now = time.monotonic()
        return {
            "down": [h.payload(now) for h in self.tasks.values() if h.down],
            "restarts": {h.name: h.restarts for h in self.tasks.values() if h.restarts},
        }

    async def _keep(self, health: TaskHealth, factory: Factory) -> None:
        delay = self.backoff_min
        try:
            while True:
                began = time.monotonic()
                try:
                    await factory()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    health.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    log.exception("task %s died; restarting it in %.1f s", health.name, delay)
                else:
                    return  # finished its job (a loop that ends when its owner stops)
                if time.monotonic() - began >= HEALTHY_AFTER:
                    delay = self.backoff_min
                health.down_since = time.monotonic()
                self._changed()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                health.restarts += 1
                health.down_since = None
                log.warning("task %s restarted (restart %d)", health.name, health.restarts)
                self._changed()
        finally:
            # Cancelled while waiting to restart: stopped on purpose, not down.
            if health.down_since is not None:
                health.down_since = None
                self._changed()

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("a supervisor listener failed")


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], grace: float = 2.0) -> None:
    """Cancel tasks and wait for them. One still running after `grace` is cancelled again,
    and again, until it ends: a library inside it may have swallowed the first cancel (Python
    3.11's `asyncio.wait_for`, gh-86296), and a stop must not wait for ever on it."""
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            log.warning("task %s did not end when cancelled: cancelling it again", task.get_name())
            task.cancel()
