"""`facility-agent run` as a service: systemd notify and watchdog, SIGHUP reload, and the
retained summary `P/agent/recent` that `facility-agent status` reads.

`P/agent/recent` is an addition next to CONTRACT.md's topics (which are unchanged): the state
topics say what each device looks like, this one says what the agent is doing (a plan in
progress, the last reload) and the last events, which MQTT itself does not keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from facility_agent import __version__
from facility_agent.core.model import Event, iso_ts, utcnow
from facility_agent.runtime.agent import Agent
from facility_agent.runtime.faults import part_name
from facility_agent.runtime.reload import Reloader, describe
from facility_agent.runtime.sdnotify import Notifier

log = logging.getLogger(__name__)

RECENT_EVENTS = 20
#: The summary is republished at least this often, and at most every SUMMARY_MIN seconds.
SUMMARY_EVERY = 30.0
SUMMARY_MIN = 0.5
#: Step events of a plan are in the plan summary; they would push everything else out.
_NOT_RECENT = ("shutdown.step", "recovery.step", "hook.ok")


def file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "?"


class Summary:
    """What the agent is doing, kept from its events and its policy engine."""

    def __init__(self, agent: Agent, config_path: Path) -> None:
        self.agent = agent
        self.config_path = config_path
        self.started = iso_ts(utcnow())
        self.config_digest = file_digest(config_path)
        self.events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.last_reload: dict[str, Any] | None = None
        self.dirty = asyncio.Event()
        agent.on_event(self._on_event)
        # A task going down (or coming back) is news for `facility-agent status` at once.
        agent.supervisor.on_change(self.dirty.set)

    def _on_event(self, event: Event) -> None:
        if event.type in _NOT_RECENT:
            return
        body = event.payload()
        body.pop("data", None)
        body.pop("site", None)
        self.events.append(body)
        self.dirty.set()

    def reloaded(self, result: dict[str, Any]) -> None:
        self.last_reload = {"ts": iso_ts(utcnow()), **result}
        if result["ok"]:
            self.config_digest = file_digest(self.config_path)
        self.dirty.set()

    def plan(self) -> dict[str, Any] | None:
        engine = self.agent.policy
        if engine is None:
            return None
        if engine.plan_task is not None and engine.policy.shutdown is not None:
            stages = engine.policy.shutdown.stages
            runner = engine.plan
            index = runner.stage if runner is not None else 0
            return {
                "kind": "shutdown",
                "state": "running",
                "reason": engine.plan_reason,
                "stage": stages[index].name if index < len(stages) else None,
                "stage_index": index,
                "stages": len(stages),
                "past_no_return": bool(runner and runner.past_no_return),
            }
        if engine.recovery_task is not None:
            return {"kind": "recovery", "state": "running"}
        if engine.site_down:
            return {"kind": "shutdown", "state": "completed", "site_down": True}
        return None

    def payload(self) -> bytes:
        return orjson.dumps(
            {
                "ts": iso_ts(utcnow()),
                "site": self.agent.config.site,
                "version": __version__,
                "started": self.started,
                "config": {"file": str(self.config_path), "sha256": self.config_digest},
                "devices": sorted(self.agent.drivers),
                "groups": [g.id for g in self.agent.config.groups],
                "plan": self.plan(),
                "last_reload": self.last_reload,
                "tasks": self.agent.supervisor.snapshot(),
                "events": list(self.events),
            }
        )

    def publish(self) -> None:
        payload = self.payload()
        for sink in self.agent.sinks:
            try:
                sink.publish_retained("agent/recent", payload)
            except Exception as exc:
                self.agent.faults.failed(part_name(sink), "publish_retained", exc)

    async def run(self) -> None:
        last_plan: object = None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.dirty.wait()
            plan = self.plan()
            if self.dirty.is_set() or plan != last_plan or self._due():
                self.dirty.clear()
                last_plan = plan
                self._sent = time.monotonic()
                self.publish()
                await asyncio.sleep(SUMMARY_MIN)

    _sent = 0.0

    def _due(self) -> bool:
        return time.monotonic() - self._sent >= SUMMARY_EVERY


def _status_line(agent: Agent) -> str:
    states = agent.state.all()
    lost = sum(1 for s in states.values() if s.comm == "lost")
    on_battery = sum(1 for s in states.values() if "OB" in s.status)
    text = f"site {agent.config.site}: {len(agent.drivers)} device(s)"
    if lost:
        text += f", {lost} lost"
    if on_battery:
        text += f", {on_battery} on battery"
    return text


async def run_service(agent: Agent, config_path: Path, stop: asyncio.Event) -> None:
    """Start the agent, tell systemd, keep the watchdog fed, reload on SIGHUP, stop cleanly."""
    notifier = Notifier()
    reloader = Reloader(agent, config_path)
    summary = Summary(agent, config_path)
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    # Keep-alives start before the agent does: a slow start (a broker far away) must not look
    # like a hung loop, and systemd's TimeoutStartSec covers the start itself.
    tasks.append(asyncio.create_task(notifier.watchdog(), name="sd-watchdog"))

    async def do_reload() -> None:
        log.warning("SIGHUP: reloading %s", config_path)
        notifier.reloading()
        try:
            result = await reloader.reload()
        except Exception:
            log.exception("reload failed unexpectedly; the running config is kept")
        else:
            summary.reloaded(describe(result))
        notifier.ready(_status_line(agent))

    def on_hup() -> None:
        tasks.append(asyncio.create_task(do_reload(), name="reload"))

    await agent.start()
    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        tasks.append(agent.supervisor.spawn("summary", summary.run))
        notifier.ready(_status_line(agent))
        log.info("ready%s", " (systemd notified)" if notifier.enabled else "")
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGHUP)
        notifier.stopping()
        for task in tasks:
            if task.get_name() != "sd-watchdog":
                task.cancel()
        await asyncio.gather(
            *(t for t in tasks if t.get_name() != "sd-watchdog"), return_exceptions=True
        )
        await reloader.close()
        try:
            summary.publish()
        except Exception:
            # Whatever it is, the agent must still stop cleanly (the watchdog is still fed).
            log.exception("publishing the last summary failed")
        # The watchdog keeps running while the agent stops (a plan stage may take a while).
        try:
            await agent.stop()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            notifier.close()
