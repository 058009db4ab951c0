"""Wires one site together: drivers -> pollers -> site state -> sinks; starts and stops cleanly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from facility_agent.config.site import SiteConfig
from facility_agent.core.driver import DeviceConfig, Driver, SiteHooks, SiteService
from facility_agent.core.model import DeviceState, Event, Severity, utcnow
from facility_agent.core.registry import driver_class, driver_classes
from facility_agent.core.sink import Sink
from facility_agent.policy.engine import PolicyEngine
from facility_agent.runtime.faults import Faults, part_name
from facility_agent.runtime.poller import DevicePoller, PollFailed, PollOk, PollOutcome
from facility_agent.runtime.state import SiteState, Transition
from facility_agent.runtime.supervise import Supervisor, cancel_all

T = TypeVar("T")

log = logging.getLogger(__name__)

StateListener = Callable[[DeviceState], None]
EventListener = Callable[[Event], None]

_LOG_LEVEL = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.CRITICAL: logging.ERROR,
}


def default_sinks(config: SiteConfig) -> list[Sink]:
    """MQTT, InfluxDB, chat alerts and /metrics over one durable outbox (outputs.py)."""
    from facility_agent.sinks.assemble import build_outputs

    return build_outputs(config)


class Agent:
    """One running site: a driver and a poller per device, the site state they feed, the
    outputs (sinks) every state and event goes to, the policy engine, and the drivers' site-wide
    services (trap listener, NUT face).

    Everything a poll produces passes through `_handle` on the loop: state first, then the
    sinks and listeners (each isolated, faults.py), then the policy engine. A reload changes a
    running agent only through `add_device`, `remove_device` and `replace_outputs`."""

    def __init__(self, config: SiteConfig, sinks: list[Sink] | None = None) -> None:
        self.config = config
        self.state = SiteState(config.site)
        self.sinks: list[Sink] = default_sinks(config) if sinks is None else sinks
        #: Every long-lived task runs under this; the sinks get it too (supervise.py).
        self.supervisor = Supervisor()
        #: What failed on the event path, per sink (faults.py).
        self.faults = Faults()
        for sink in self.sinks:
            sink.attach(self.supervisor, self.faults)
        self.drivers: dict[str, Driver] = {}
        self.pollers: dict[str, DevicePoller] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._state_listeners: list[StateListener] = []
        self._event_listeners: list[EventListener] = []
        self._last_published: dict[str, float] = {}
        self.heartbeat = config.mqtt.heartbeat if config.mqtt else 60.0
        self.policy: PolicyEngine | None = None
        #: The drivers' site-wide services that are running, by driver name.
        self.services: dict[str, SiteService] = {}
        #: Drill runs journal as drills and may skip hooks (`facility-agent drill --dry-run`).
        self.drill = False
        self.dry_run = False
        self.journal_name = "journal.sqlite"

    def spawn_poller(self, poller: DevicePoller) -> asyncio.Task[None]:
        return self.supervisor.spawn(f"poll:{poller.device}", poller.run)

    def on_state(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def on_event(self, listener: EventListener) -> None:
        self._event_listeners.append(listener)

    async def start(self) -> None:
        for dev in self.config.devices:
            self._build_device(dev, driver_class(dev.driver)(dev))
        for sink in self.sinks:
            await sink.start()
        if self.config.policy.active:
            self.policy = self.new_policy_engine()
            await self.policy.start()
        for device in self.pollers:
            self._spawn(device)
        self._tasks.append(self.supervisor.spawn("heartbeat", self._heartbeat))
        await self.restart_services()
        log.info(
            "agent for site %s started: %d device(s), %d sink(s)",
            self.config.site,
            len(self.drivers),
            len(self.sinks),
        )

    # -- the public seams of a running agent (reload.py uses only these) ------------------------

    def add_device(self, config: DeviceConfig, driver: Driver) -> None:
        """Start polling a device (new, or changed after `remove_device(forget=False)`)."""
        self._build_device(config, driver)
        self._spawn(config.id)
        self.update_alerts()

    async def remove_device(self, device: str, *, forget: bool = True) -> None:
        """Stop polling a device and close its driver. `forget`: the device is gone from the
        site, so its state, task health and retained state are cleared too; without it (a
        changed device) the last state is kept, so the new driver raises no false event."""
        mine = [task for task in self._tasks if task.get_name() == f"poll:{device}"]
        await cancel_all(mine)
        self._tasks = [task for task in self._tasks if task not in mine]
        self.pollers.pop(device, None)
        driver = self.drivers.pop(device, None)
        if driver is not None:
            await _close(device, driver)
        if forget:
            self.state.forget(device)
            self.supervisor.forget(f"poll:{device}")
            self._last_published.pop(device, None)
            self.clear_retained(device)

    async def replace_outputs(self, sinks: list[Sink], timeout: float = 5.0) -> None:
        """Swap every output: the new ones start (and get the current states) before the old
        ones stop, so no state or event falls between them."""
        for sink in sinks:
            sink.attach(self.supervisor, self.faults)
            await sink.start()
        old, self.sinks = self.sinks, sinks
        for state in self.state.all().values():
            self._publish_state(state)
        await _stop_sinks(old, timeout)

    def clear_retained(self, device: str) -> None:
        """An empty retained message removes a device's last state (from MQTT's broker)."""
        for sink in self.sinks:
            try:
                sink.publish_retained(f"{device}/state", b"")
            except Exception as exc:
                self.faults.failed(part_name(sink), "publish_retained", exc)

    async def restart_services(self, drivers: set[str] | None = None) -> None:
        """(Re)start the drivers' site-wide services for the current config and devices: all
        of them, or those of `drivers` (a reload restarts only the services whose section or
        devices changed, so upsmon secondaries stay connected to the NUT face meanwhile)."""
        for name, cls in sorted(driver_classes().items()):
            if drivers is not None and name not in drivers:
                continue
            await self._stop_service(name)
            sections = {
                key: section
                for key in cls.site_sections
                if (section := self.config.sections.get(key)) is not None
            }
            hooks = SiteHooks(
                site=self.config.site,
                devices=tuple(self.config.devices),
                sections=sections,
                emit=self.emit,
                poll_now=self._poll_now,
                states=self.state.all,
                secondaries_fsd=self._secondaries_fsd,
                spawn=self.supervisor.spawn,
                dry_run=self.dry_run,
            )
            try:
                service = await cls.start_site(hooks)
            except Exception:
                log.exception("the %s driver's site service failed to start", name)
                continue
            if service is not None:
                self.services[name] = service

    async def _stop_service(self, name: str) -> None:
        service = self.services.pop(name, None)
        if service is None:
            return
        try:
            await service.stop()
        except Exception:
            log.exception("stopping the %s driver's site service failed", name)

    def _build_device(self, config: DeviceConfig, driver: Driver) -> None:
        self.drivers[config.id] = driver
        self.state.declare_flag_events(config.id, driver.flag_events())
        self.pollers[config.id] = DevicePoller(driver, self._handle)

    def _spawn(self, device: str) -> None:
        self._tasks.append(self.spawn_poller(self.pollers[device]))

    def _poll_now(self, device: str) -> None:
        poller = self.pollers.get(device)
        if poller is not None:
            poller.poll_now()

    def _secondaries_fsd(self) -> bool:
        return self.policy is not None and self.policy.secondaries_fsd

    def new_policy_engine(self) -> PolicyEngine:
        """The policy engine for the current config, journaling under the state directory."""
        return PolicyEngine(
            self.config.policy,
            self.state,
            self.drivers,
            self.emit,
            self._publish_state,
            self.config.state_path() / self.journal_name,
            dry_run=self.dry_run,
            drill=self.drill,
            supervisor=self.supervisor,
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """Let a running plan stage finish (the journal keeps the rest), stop polling, close
        devices, then let the sinks deliver what they hold."""
        if self.policy is not None:
            try:
                await self.policy.stop()
            except Exception:
                log.exception("stopping the policy engine failed")
        for name in list(self.services):
            await self._stop_service(name)
        await cancel_all(self._tasks)
        self._tasks.clear()
        for device, driver in self.drivers.items():
            await _close(device, driver)
        await _stop_sinks(self.sinks, timeout)
        log.info("agent for site %s stopped", self.config.site)

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def _handle(self, outcome: PollOutcome) -> None:
        try:
            self._handle_outcome(outcome)
        except Exception as exc:
            # A state that cannot be applied must not become a log line per poll.
            self.faults.failed(f"poll:{outcome.device}", "handling its result", exc)

    def _handle_outcome(self, outcome: PollOutcome) -> None:
        driver = self.drivers[outcome.device].name
        if isinstance(outcome, PollOk):
            transition = self.state.apply_sample(driver, outcome.sample)
        elif isinstance(outcome, PollFailed):
            log.debug(
                "poll of %s failed (%d): %s", outcome.device, outcome.failures, outcome.error.reason
            )
            if not outcome.lost:
                return
            transition = self.state.apply_lost(
                outcome.device, driver, outcome.error.reason, utcnow()
            )
        self._deliver(transition)
        self.update_alerts()

    def update_alerts(self) -> None:
        """Alert-mode polling: a device is polled faster while it, or the site's power, is
        degraded (comm lost, or a flag its driver or profile declares: on battery, a PDU
        without input, an ATS feed or a link down; `Driver.alert_flags`)."""
        states = self.state.all()
        own_alert: dict[str, bool] = {}
        site_alert = False
        for device, driver in self.drivers.items():
            st = states.get(device)
            if st is None:
                continue
            flags = driver.alert_flags()
            status = set(st.status)
            own_alert[device] = st.comm == "lost" or bool(flags.own & status)
            site_alert = site_alert or bool(flags.site & status)
        for device, poller in self.pollers.items():
            poller.set_alert(own_alert.get(device, False) or site_alert)

    def _deliver(self, transition: Transition) -> None:
        state = transition.state
        if transition.changed:
            self._publish_state(state)
        for event in transition.events:
            self.emit(event)
        if self.policy is not None:
            # Decide at once on a new state rather than at the next tick: decision latency.
            try:
                self.policy.evaluate()
            except Exception as exc:
                self.faults.failed("policy", "evaluate", exc)

    def emit(self, event: Event) -> None:
        """Log an event, hand it to every sink and listener, and run the hooks it matches.

        Each of them is isolated: one that raises is counted and logged once (faults.py) and
        the event still reaches all the others, the hooks and the policy engine."""
        log.log(
            _LOG_LEVEL.get(event.severity, logging.INFO),
            "[%s] %s (event %s)",
            event.type,
            event.message,
            event.id,
            # journal and JSON log lines carry these as fields (logfmt.py).
            extra={"device": event.device, "event_id": event.id, "event_type": event.type},
        )
        self._fan_out(event, [(s, s.publish_event) for s in self.sinks], "publish_event")
        self._fan_out(event, [(f, f) for f in self._event_listeners], "event listener")
        if self.policy is not None:
            try:
                self.policy.on_event(event)
            except Exception as exc:
                self.faults.failed("policy", "on_event", exc)

    def _publish_state(self, state: DeviceState) -> None:
        self._last_published[state.device] = time.monotonic()
        self._fan_out(state, [(s, s.publish_state) for s in self.sinks], "publish_state")
        self._fan_out(state, [(f, f) for f in self._state_listeners], "state listener")

    def _fan_out(
        self, item: T, targets: Sequence[tuple[object, Callable[[T], None]]], kind: str
    ) -> None:
        """Hand `item` to each (part, callable): one that raises is counted against its part
        (faults.py) and the others still get it."""
        for part, deliver in targets:
            try:
                deliver(item)
            except Exception as exc:
                self.faults.failed(part_name(part), kind, exc)

    async def _heartbeat(self) -> None:
        """Republish every state at least once per heartbeat, even when nothing changed."""
        tick = min(1.0, self.heartbeat / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for device, state in self.state.all().items():
                if now - self._last_published.get(device, 0.0) >= self.heartbeat:
                    self._publish_state(state)


async def _close(device: str, driver: Driver) -> None:
    try:
        async with asyncio.timeout(2.0):
            await driver.close()
    except Exception as exc:
        log.warning("closing %s failed: %s", device, exc)


async def _stop_sinks(sinks: list[Sink], timeout: float) -> None:
    for sink in sinks:
        try:
            await sink.stop(timeout)
        except Exception:
            log.exception("stopping sink %s failed", type(sink).__name__)
