"""Wires one site together: drivers -> pollers -> site state -> sinks; starts and stops cleanly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .config import SiteConfig, TrapsConfig
from .driver import Driver
from .faults import Faults, part_name
from .model import DeviceState, Event, Severity, utcnow
from .nut_face.server import NutFace
from .policy.engine import PolicyEngine
from .poller import DevicePoller, PollFailed, PollOk, PollOutcome
from .registry import driver_class
from .sinks.base import Sink
from .state import SiteState, Transition
from .supervise import Supervisor, adopt
from .traps import SnmpDevice, TrapListener

log = logging.getLogger(__name__)

StateListener = Callable[[DeviceState], None]
EventListener = Callable[[Event], None]

_LOG_LEVEL = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.CRITICAL: logging.ERROR,
}
#: A device showing one of these flags is polled at its `alert_interval` (NUT's POLLFREQALERT):
#: UPS flags, and the degradation flags of PDUs, transfer switches and uplinks (SNMP profiles).
_ALERT_FLAGS = frozenset(
    {"OB", "LB", "FSD", "OVER", "BYPASS", "INPUT_LOST", "FEED_LOST", "REDUNDANCY_LOST", "LINK_DOWN"}
)
#: Power trouble anywhere puts every device of the site in alert mode: during an outage the
#: whole power path matters, not only the box that noticed first.
_SITE_ALERT_FLAGS = frozenset({"OB", "LB", "FSD", "INPUT_LOST", "FEED_LOST", "REDUNDANCY_LOST"})


def default_sinks(config: SiteConfig) -> list[Sink]:
    """MQTT, InfluxDB, chat alerts and /metrics over one durable outbox (outputs.py)."""
    from .outputs import build_outputs

    return build_outputs(config)


class Agent:
    def __init__(self, config: SiteConfig, sinks: list[Sink] | None = None) -> None:
        self.config = config
        self.state = SiteState(config.site)
        self.sinks: list[Sink] = default_sinks(config) if sinks is None else sinks
        #: Every long-lived task runs under this; the sinks get it too (supervise.py).
        self.supervisor = Supervisor()
        #: What failed on the event path, per sink (faults.py).
        self.faults = Faults()
        for sink in self.sinks:
            self.adopt(sink)
        self.drivers: dict[str, Driver] = {}
        self.pollers: dict[str, DevicePoller] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._state_listeners: list[StateListener] = []
        self._event_listeners: list[EventListener] = []
        self._last_published: dict[str, float] = {}
        self.heartbeat = config.mqtt.heartbeat if config.mqtt else 60.0
        self.policy: PolicyEngine | None = None
        self.traps: TrapListener | None = None
        self.nut_face: NutFace | None = None
        #: Drill runs journal as drills and may skip hooks (`facility-agent drill --dry-run`).
        self.drill = False
        self.dry_run = False
        self.journal_name = "journal.sqlite"

    def adopt(self, sink: object) -> None:
        """Hand a sink this agent's supervisor and fault counts (for those that show them)."""
        adopt(sink, self.supervisor)
        if hasattr(sink, "faults"):
            sink.faults = self.faults

    def spawn_poller(self, poller: DevicePoller) -> asyncio.Task[None]:
        return self.supervisor.spawn(f"poll:{poller.device}", poller.run)

    def on_state(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def on_event(self, listener: EventListener) -> None:
        self._event_listeners.append(listener)

    async def start(self) -> None:
        for dev in self.config.devices:
            driver = driver_class(dev.driver)(dev)
            self.drivers[dev.id] = driver
            # Drivers may declare what their own status flags mean (Modbus profiles do).
            declared = getattr(driver, "flag_events", None)
            if callable(declared):
                self.state.declare_flag_events(dev.id, declared())
            self.pollers[dev.id] = DevicePoller(driver, self._handle)
        for sink in self.sinks:
            await sink.start()
        if self.config.policy.active:
            self.policy = self.new_policy_engine()
            await self.policy.start()
        for poller in self.pollers.values():
            self._tasks.append(self.spawn_poller(poller))
        self._tasks.append(self.supervisor.spawn("heartbeat", self._heartbeat))
        if self.config.traps is not None:
            await self._start_traps(self.config.traps)
        # A dry run touches nothing: no face, so no secondary can see a drill's FSD.
        if self.config.nut_server is not None and not self.dry_run:
            self.nut_face = NutFace(self.config.nut_server, self.state.all, self._secondaries_fsd)
            await self.nut_face.start()
        log.info(
            "agent for site %s started: %d device(s), %d sink(s)",
            self.config.site,
            len(self.drivers),
            len(self.sinks),
        )

    def _secondaries_fsd(self) -> bool:
        return self.policy is not None and self.policy.secondaries_fsd

    def new_policy_engine(self) -> PolicyEngine:
        """The policy engine for the current config, journaling under the state directory."""
        return PolicyEngine(
            self.config.site,
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
        if self.traps is not None:
            await self.traps.stop()
            self.traps = None
        if self.nut_face is not None:
            await self.nut_face.stop()
            self.nut_face = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for device, driver in self.drivers.items():
            try:
                async with asyncio.timeout(2.0):
                    await driver.close()
            except Exception as exc:
                log.warning("closing %s failed: %s", device, exc)
        for sink in self.sinks:
            try:
                await sink.stop(timeout)
            except Exception:
                log.exception("stopping sink %s failed", type(sink).__name__)
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
        self._update_alerts()

    def _update_alerts(self) -> None:
        """Alert-mode polling: a device is polled faster while it, or the site's power, is
        degraded (comm lost, on battery, a PDU without input, an ATS feed or a link down)."""
        states = self.state.all()
        site_alert = any(_SITE_ALERT_FLAGS & set(st.status) for st in states.values())
        for device, poller in self.pollers.items():
            st = states.get(device)
            own = st is not None and (st.comm == "lost" or bool(_ALERT_FLAGS & set(st.status)))
            poller.set_alert(own or site_alert)

    async def _start_traps(self, config: TrapsConfig) -> None:
        """Start the SNMP trap listener; a port it cannot bind is logged, not fatal."""
        devices = [
            SnmpDevice(d.id, str(getattr(d, "host", "")), str(getattr(d, "profile", "")))
            for d in self.config.devices
            if d.driver == "snmp" and getattr(d, "host", None)
        ]

        def poll_now(device: str) -> None:
            poller = self.pollers.get(device)
            if poller is not None:
                poller.poll_now()

        listener = TrapListener(
            config, self.config.site, devices, self.emit, poll_now, supervisor=self.supervisor
        )
        try:
            await listener.start()
        except Exception as exc:
            log.error(
                "SNMP trap listener cannot listen on %s: %s (port 162 needs privilege: "
                "see docs/snmp.md); polling goes on without traps",
                config.listen,
                exc,
            )
            return
        self.traps = listener

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
        for sink in self.sinks:
            try:
                sink.publish_event(event)
            except Exception as exc:
                self.faults.failed(part_name(sink), "publish_event", exc)
        for listener in self._event_listeners:
            try:
                listener(event)
            except Exception as exc:
                self.faults.failed(part_name(listener), "event listener", exc)
        if self.policy is not None:
            try:
                self.policy.on_event(event)
            except Exception as exc:
                self.faults.failed("policy", "on_event", exc)

    def _publish_state(self, state: DeviceState) -> None:
        self._last_published[state.device] = time.monotonic()
        for sink in self.sinks:
            try:
                sink.publish_state(state)
            except Exception as exc:
                self.faults.failed(part_name(sink), "publish_state", exc)
        for listener in self._state_listeners:
            try:
                listener(state)
            except Exception as exc:
                self.faults.failed(part_name(listener), "state listener", exc)

    async def _heartbeat(self) -> None:
        """Republish every state at least once per heartbeat, even when nothing changed."""
        tick = min(1.0, self.heartbeat / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for device, state in self.state.all().items():
                if now - self._last_published.get(device, 0.0) >= self.heartbeat:
                    self._publish_state(state)
