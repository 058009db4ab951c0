"""The `notify:` routes of the site file as one output: alert rules, delivery and commands.

The way of an event: `AlertRoute` (alerting.py) decides what to say and when; the message goes
into the outbox and out through apprise (delivery.py). Polling never waits on any of this: the
agent only calls `publish_event`, which stores and returns. Routes with `allow_commands` also
read their Matrix room (matrix.py); `!ack`, `!status` and `!silence` (commands.py) from allowed
users act on every route, and the answer goes back through the same outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from facility_agent.config.outputs import NotifyRoute
from facility_agent.core.model import DeviceState, Event, Severity
from facility_agent.core.sink import Sink
from facility_agent.outbox import Outbox
from facility_agent.runtime.faults import Faults
from facility_agent.runtime.supervise import Supervisor
from facility_agent.sinks.notify.alerting import Message
from facility_agent.sinks.notify.commands import interpret
from facility_agent.sinks.notify.delivery import DeliveryRoute
from facility_agent.sinks.notify.matrix import MatrixCommands, MatrixTarget

log = logging.getLogger(__name__)

#: How often group timers and repeats are checked (the latency floor of a grouped alert).
TICK = 0.1


class NotifySink(Sink):
    """The `notify:` routes of the site file, as one output."""

    name = "notify"

    def __init__(
        self,
        routes: Iterable[NotifyRoute],
        site: str,
        outbox: Outbox,
        *,
        feeds: Mapping[str, Iterable[str]] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.site = site
        self.outbox = outbox
        self.feeds = {k: list(v) for k, v in (feeds or {}).items()}
        #: Where the Matrix readers keep their device and token; None: in memory only.
        self.state_dir = state_dir
        self.states: dict[str, DeviceState] = {}
        self.routes: list[DeliveryRoute] = []
        for i, cfg in enumerate(routes):
            name = cfg.name or f"route-{i}"
            store = state_dir / "apprise" if state_dir is not None else None
            self.routes.append(DeliveryRoute(outbox, cfg, name, site, self.feeds, store))
        self._ticker: asyncio.Task[None] | None = None
        self._listeners: list[MatrixCommands] = []
        self.supervisor = Supervisor()

    def attach(self, supervisor: Supervisor, faults: Faults) -> None:
        self.supervisor = supervisor

    async def start(self) -> None:
        if self._ticker is not None:
            return
        for route in self.routes:
            route.more = asyncio.Event()
            route.channel = self.outbox.channel(route.sink_name, route.take, window=200)
        await self.outbox.open()
        for route in self.routes:
            route.task = self.supervisor.spawn(route.sink_name, route.deliver_forever)
            if route.config.allow_commands:
                listener = self._listener(route)
                if listener is not None:
                    self._listeners.append(listener)
                    listener.task = self.supervisor.spawn(
                        f"matrix-commands:{route.name}", listener.run
                    )
        self._ticker = self.supervisor.spawn("notify-tick", self._tick_forever)

    def _listener(self, route: DeliveryRoute) -> MatrixCommands | None:
        target = MatrixTarget.from_url(route.url)
        if target is None:
            if route.url.startswith(("matrix://", "matrixs://")):
                log.error("notify route %s: the Matrix URL names no user or room", route.name)
            else:
                log.warning("notify route %s: commands are only read from Matrix", route.name)
            return None
        session = None
        if self.state_dir is not None:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", route.name)
            session = self.state_dir / f"matrix-{safe}.json"

        def on_command(sender: str, text: str) -> None:
            self.command(route, sender, text)

        return MatrixCommands(
            target, on_command, name=route.name, where=route.where, session_file=session
        )

    def publish_state(self, state: DeviceState) -> None:
        self.states[state.device] = state

    def publish_event(self, event: Event) -> None:
        now = time.time()
        for route in self.routes:
            route.alerts.offer(event, now)
        self._emit(now)

    async def stop(self, timeout: float = 5.0) -> None:
        if self._ticker is None:
            return
        self._ticker.cancel()
        for listener in self._listeners:
            if listener.task is not None:
                listener.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener.task
        self._listeners.clear()
        self._emit(time.time())
        deadline = time.monotonic() + min(timeout, 3.0)
        while any(r.rows and r.failing_since is None for r in self.routes):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        for route in self.routes:
            if route.task is not None:
                route.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await route.task
            if route.channel is not None:
                route.channel.release(len(route.rows))
            route.rows.clear()
            route.executor.shutdown(wait=False)
        self._ticker = None
        await self.outbox.close()

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for route in self.routes:
            for key, value in route.counts.items():
                out[key] = out.get(key, 0) + value
            out["queued"] = out.get("queued", 0) + (
                route.channel.pending if route.channel is not None else 0
            )
            out["firing"] = out.get("firing", 0) + len(route.alerts.firing())
        return out

    def command(self, route: DeliveryRoute, sender: str, text: str) -> None:
        """One `!command` from chat; the reply goes out on the route it came from."""
        now = time.time()
        got = interpret(
            text,
            sender,
            allowed=route.config.allow_commands,
            here=route.alerts,
            everywhere=[r.alerts for r in self.routes],
            states=self.states,
            now=now,
        )
        if got is not None:
            verb, reply = got
            route.store(Message(f"[{self.site}] {verb}", reply, Severity.INFO, "reply", now))

    def _emit(self, now: float) -> None:
        for route in self.routes:
            for msg in route.alerts.due(now):
                route.store(msg)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self._emit(time.time())
            except Exception:
                log.exception("alert grouping failed")
