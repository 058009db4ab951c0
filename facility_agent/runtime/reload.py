"""Reload on SIGHUP: the changed site file applied to a running agent without a restart.

The new file is validated in full first (`load_site`, then every new or changed driver is
built); anything wrong and nothing changes: every problem is logged and the running config
stays. Otherwise only what changed is touched: removed devices are stopped and their retained
state cleared, changed ones get a new driver and poller (their last state is kept, so a changed
interval raises no event), added ones start, and the others never notice. The policy engine
gets the new groups and hooks at once; a new shutdown or recovery plan waits while a plan runs,
so a running plan is never swapped under its own feet. Sections that shape the outputs (mqtt,
outbox, influxdb, notify, prometheus, state_dir, site) need a restart: a change there is logged
and the running settings kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facility_agent.config.policy import PolicyConfig
from facility_agent.config.site import ConfigError, load_site
from facility_agent.core.driver import Driver
from facility_agent.core.registry import driver_class, driver_classes

if TYPE_CHECKING:
    from facility_agent.policy.engine import PolicyEngine
    from facility_agent.runtime.agent import Agent

log = logging.getLogger(__name__)

#: Site file sections only a restart applies (they shape the outputs and the state directory).
RESTART_SECTIONS = ("site", "state_dir", "mqtt", "outbox", "influxdb", "notify", "prometheus")
_PLAN_SECTIONS = ("shutdown", "recovery")


@dataclass
class ReloadResult:
    ok: bool
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    policy: str = "unchanged"  # unchanged | applied | deferred
    restart_needed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.ok:
            return f"reload refused: {len(self.problems)} problem(s); running config kept"
        parts = [
            f"{name} {', '.join(ids)}"
            for name, ids in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if ids
        ]
        parts.append(f"policy {self.policy}")
        if self.restart_needed:
            parts.append(f"needs a restart for: {', '.join(self.restart_needed)} (kept as running)")
        return "reloaded: " + "; ".join(parts)


class Reloader:
    """Applies a new site file to one running agent; one reload at a time."""

    def __init__(self, agent: Agent, path: Path) -> None:
        self.agent = agent
        self.path = path
        self._lock = asyncio.Lock()
        self._deferred: asyncio.Task[None] | None = None

    async def reload(self) -> ReloadResult:
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> ReloadResult:
        agent = self.agent
        try:
            new = await asyncio.to_thread(load_site, self.path)
        except ConfigError as exc:
            for config_problem in exc.problems:
                log.error("reload refused: %s: %s", exc.source, config_problem)
            result = ReloadResult(False, problems=[str(p) for p in exc.problems])
            log.error("%s", result.summary())
            return result
        old = agent.config
        keep = {s: getattr(old, s) for s in RESTART_SECTIONS if getattr(new, s) != getattr(old, s)}
        for section in keep:
            log.warning(
                "reload: the %r section changed; it needs a restart to apply "
                "(systemctl restart facility-agent): the running settings are kept",
                section,
            )
        new = new.model_copy(update=keep)
        before = {d.id: d for d in old.devices}
        after = {d.id: d for d in new.devices}
        result = ReloadResult(True, restart_needed=list(keep))
        result.added = [d for d in after if d not in before]
        result.removed = [d for d in before if d not in after]
        result.changed = [d for d in after if d in before and after[d] != before[d]]

        # Build every new driver before touching anything: a driver that refuses its config
        # (a profile that cannot be read ...) refuses the whole reload.
        built: dict[str, Driver] = {}
        for device in result.added + result.changed:
            try:
                built[device] = driver_class(after[device].driver)(after[device])
            except Exception as exc:
                result.problems.append(f"devices.{device}: {exc}")
        if result.problems:
            for problem in result.problems:
                log.error("reload refused: %s: %s", self.path, problem)
            for driver in built.values():
                with contextlib.suppress(Exception):
                    await driver.close()
            result.ok = False
            log.error("%s", result.summary())
            return result

        for device in result.removed + result.changed:
            await agent.remove_device(device, forget=device in result.removed)
            if device in result.removed:
                log.info("reload: device %s removed", device)
        for device in result.added + result.changed:
            agent.add_device(after[device], built[device])
            log.info("reload: device %s (%s) started", device, after[device].driver)
        agent.config = new
        # A driver's site service (trap listener, NUT face) is restarted when its own section
        # or one of its driver's devices changed; the others are left alone.
        touched = {before[d].driver for d in result.removed + result.changed}
        touched |= {after[d].driver for d in result.added + result.changed}
        keys = set(old.sections) | set(new.sections)
        moved = {k for k in keys if old.sections.get(k) != new.sections.get(k)}
        owners = {name for name, cls in driver_classes().items() if moved & set(cls.site_sections)}
        if touched | owners:
            await agent.restart_services(touched | owners)
        result.policy = await self._reload_policy(old.policy, new.policy)
        agent.update_alerts()
        log.info("%s", result.summary())
        return result

    # -- policy ------------------------------------------------------------------------------

    async def _reload_policy(self, old: PolicyConfig, new: PolicyConfig) -> str:
        agent = self.agent
        if old == new:
            return "unchanged"
        engine = agent.policy
        if engine is None:
            if new.active:
                await self._start_engine()
            return "applied"
        if not new.active and not _plan_running(engine):
            await engine.stop()
            agent.policy = None
            return "applied"
        plan_changed = any(getattr(old, s) != getattr(new, s) for s in _PLAN_SECTIONS)
        if plan_changed and _plan_running(engine):
            # Groups, hooks and topology now; the plan sections once the running plan ends.
            interim = new.model_copy(update={s: getattr(old, s) for s in _PLAN_SECTIONS})
            self._apply(engine, interim)
            log.warning(
                "reload: the shutdown/recovery plan changed while a plan runs: the running plan "
                "goes on as it was; the new plan applies when it has ended"
            )
            if self._deferred is not None:
                self._deferred.cancel()
            self._deferred = asyncio.create_task(self._apply_later(engine, new), name="reload")
            return "deferred"
        self._apply(engine, new)
        return "applied"

    async def _apply_later(self, engine: PolicyEngine, new: PolicyConfig) -> None:
        while _plan_running(engine):  # noqa: ASYNC110 - the engine has no event for it
            await asyncio.sleep(0.5)
        if self.agent.policy is engine:
            self._apply(engine, new)
            log.warning(
                "reload: the running plan has ended; the new shutdown/recovery plan applies"
            )

    def _apply(self, engine: PolicyEngine, new: PolicyConfig) -> None:
        """Swap the engine's policy in place (PolicyEngine.reconfigure); the state and retained
        topic of a group that is gone are cleared."""
        for gone in engine.reconfigure(new):
            self.agent.state.forget(f"group-{gone}")
            self.agent.clear_retained(f"group-{gone}")

    async def _start_engine(self) -> None:
        agent = self.agent
        agent.policy = agent.new_policy_engine()
        await agent.policy.start()

    async def close(self) -> None:
        if self._deferred is not None:
            self._deferred.cancel()
            await asyncio.gather(self._deferred, return_exceptions=True)


def _plan_running(engine: PolicyEngine) -> bool:
    return engine.plan_task is not None or engine.recovery_task is not None


def describe(result: ReloadResult) -> dict[str, Any]:
    """The reload's outcome for the agent's summary (`P/agent/recent`)."""
    return {
        "ok": result.ok,
        "added": result.added,
        "removed": result.removed,
        "changed": result.changed,
        "policy": result.policy,
        "restart_needed": result.restart_needed,
        "problems": result.problems[:20],
    }
