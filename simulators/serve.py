"""Run the simulated site: the model, its clock, a scenario and the protocol faces together.

`RunningSimulator` is the in-process form (tests, the demo); `run_simulator` is what the CLI's
`simulate` command calls. Both step the model from one ticking task on the event loop, so every
face reads the same instant and nothing needs a lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facility_agent.simulators.clock import SimClock
from facility_agent.simulators.faces.ipmi import IpmiFace
from facility_agent.simulators.faces.modbus import ModbusFace
from facility_agent.simulators.faces.nut import NutServer, NutUser
from facility_agent.simulators.faces.snmp import SnmpAgentFace
from facility_agent.simulators.scenario import (
    AppliedStep,
    Scenario,
    ScenarioRunner,
    apply_action,
    load_scenario,
)
from facility_agent.simulators.site import SimulatedSite
from facility_agent.simulators.tasks import cancel

log = logging.getLogger(__name__)


@dataclass
class SimulatorOptions:
    """What to simulate and where to serve it."""

    #: A site file; None = the bundled config/sim-site.yaml.
    site_file: str | Path | None = None
    #: A bundled scenario name or a scenario file; None = no scripted events (inject by hand).
    scenario: str | Path | None = None
    #: Simulated seconds per real second; None = the scenario's suggested speed, else 1.
    speed: float | None = None
    host: str = "127.0.0.1"
    #: TCP port of the NUT face; 0 = any free port; None = no NUT face.
    nut_port: int | None = 0
    #: TCP port of the Modbus face (genset unit 10, ATS unit 11); 0 = any free port; None = none.
    modbus_port: int | None = None
    #: Modbus RTU on a pty the simulator creates (path in `info.extra["modbus_rtu"]`); a string
    #: also puts a symlink to the pty at that path.
    modbus_rtu: bool | str = False
    #: UDP port of the first simulated server's BMC (the next servers take the next ports);
    #: 0 = a free port each; None = no IPMI face.
    ipmi_port: int | None = None
    #: UDP port of the SNMP face (all agents, chosen by community); 0 = any free; None = none.
    snmp_port: int | None = None
    #: Where the SNMP face sends its v2c traps: (host, port) pairs.
    snmp_trap_targets: list[tuple[str, int]] = field(default_factory=list)
    #: Outlets each simulated PDU shows over SNMP (at least those the site wires).
    snmp_pdu_outlets: int = 24
    #: Real seconds between two model steps.
    tick: float = 0.1
    #: NUT users; None = nut_server.DEFAULT_USERS (admin/adminpass, monuser/monpass ...).
    users: Mapping[str, NutUser] | None = None
    #: `run_simulator` returns when the scenario's duration has passed.
    stop_at_scenario_end: bool = False
    #: Called for every scenario step that fires (the step is also logged).
    on_step: Callable[[AppliedStep], None] | None = None

    @classmethod
    def for_drivers(cls, drivers: Collection[str], **options: Any) -> SimulatorOptions:
        """Every face a site read by these drivers needs, each on a free port (a drill). The
        BMCs only when the site reads IPMI: each simulated server's costs a socket of its own."""
        ipmi_port = 0 if "ipmi" in drivers else None
        return cls(nut_port=0, modbus_port=0, snmp_port=0, ipmi_port=ipmi_port, **options)


@dataclass(frozen=True)
class SimulatorInfo:
    """What is being served where, given to `ready()` once every face is listening."""

    host: str
    #: Face name -> bound TCP/UDP port, e.g. {"nut": 34567}.
    ports: dict[str, int]
    site: str
    ups: list[str]
    scenario: str | None
    speed: float
    duration: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nut_port(self) -> int | None:
        return self.ports.get("nut")


class RunningSimulator:
    """The whole simulated site, started on entry and stopped on exit:

    ```
    async with RunningSimulator(SimulatorOptions(scenario="utility-outage", speed=10)) as sim:
        upsd = ("127.0.0.1", sim.nut_port)
        sim.inject("ups.comm_dead", "ups-b")
    ```
    """

    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self.options = options or SimulatorOptions()
        opts = self.options
        self.site = (
            SimulatedSite.from_file(opts.site_file) if opts.site_file else SimulatedSite.default()
        )
        self.scenario: Scenario | None = load_scenario(opts.scenario) if opts.scenario else None
        speed = opts.speed or (self.scenario.speed if self.scenario else None) or 1.0
        self.clock = SimClock(speed)
        self.scenario_runner: ScenarioRunner | None = None
        if self.scenario:
            self.scenario_runner = ScenarioRunner(
                self.site, self.scenario, self.clock, on_step=self._step_fired
            )
        self.nut: NutServer | None = None
        if opts.nut_port is not None:
            self.nut = NutServer(self.site, opts.host, opts.nut_port, opts.users)
        self.modbus: ModbusFace | None = None
        if opts.modbus_port is not None or opts.modbus_rtu:
            self.modbus = ModbusFace(self.site, opts.host, opts.modbus_port, opts.modbus_rtu)
        self.snmp: SnmpAgentFace | None = None
        if opts.snmp_port is not None:
            self.snmp = SnmpAgentFace(
                self.site,
                opts.host,
                opts.snmp_port,
                trap_targets=opts.snmp_trap_targets,
                pdu_outlets=opts.snmp_pdu_outlets,
                tick=opts.tick,
            )
        self.ipmi: IpmiFace | None = None
        if opts.ipmi_port is not None:
            self.ipmi = IpmiFace(self.site, opts.host, opts.ipmi_port)
        self.finished = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None

    # ---- life cycle ---------------------------------------------------------------------

    def faces(self) -> list[NutServer | ModbusFace | SnmpAgentFace | IpmiFace]:
        """The faces this simulator serves, in the order they start and stop."""
        return [face for face in (self.nut, self.modbus, self.snmp, self.ipmi) if face]

    async def start(self) -> None:
        for face in self.faces():
            await face.start()
        # Simulated time starts now, once the faces listen: t=0 of the scenario is "ready".
        self.clock = SimClock(self.clock.speed)
        if self.scenario_runner:
            self.scenario_runner.clock = self.clock
        self._ticker = asyncio.create_task(self._tick(), name="simulator-tick")

    async def stop(self) -> None:
        await cancel(self._ticker)
        self._ticker = None
        for face in self.faces():
            await face.stop()

    async def __aenter__(self) -> RunningSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _tick(self) -> None:
        while True:
            self.sync()
            runner = self.scenario_runner
            if runner and runner.finished and not self.finished.is_set():
                log.info("scenario %s finished at t=%.1f s", runner.scenario.name, self.site.time)
                self.finished.set()
            await asyncio.sleep(self.options.tick)

    def _step_fired(self, applied: AppliedStep) -> None:
        step = applied.step
        where = f" {step.target}" if step.target else ""
        value = f" = {step.value}" if step.value is not None else ""
        note = f" ({step.note})" if step.note else ""
        if applied.error:
            log.warning(
                "t=%.1f s: %s%s%s failed: %s", applied.time, step.do, where, value, applied.error
            )
        else:
            log.info("t=%.1f s: %s%s%s%s", applied.time, step.do, where, value, note)
        if self.options.on_step:
            self.options.on_step(applied)

    # ---- use ----------------------------------------------------------------------------

    @property
    def nut_port(self) -> int:
        if self.nut is None:
            raise RuntimeError("this simulator serves no NUT face (nut_port=None)")
        return self.nut.port

    def _modbus_ports(self) -> dict[str, int]:
        return {"modbus": self.modbus.tcp_port} if self.modbus and self.modbus.tcp_port else {}

    @property
    def info(self) -> SimulatorInfo:
        return SimulatorInfo(
            host=self.options.host,
            ports={
                **({"nut": self.nut.port} if self.nut else {}),
                **self._modbus_ports(),
                **({"snmp": self.snmp.port} if self.snmp else {}),
                **{f"ipmi:{n}": p for n, p in (self.ipmi.ports if self.ipmi else {}).items()},
            },
            site=self.site.name,
            ups=self.site.ups_names(),
            scenario=self.scenario.name if self.scenario else None,
            speed=self.clock.speed,
            duration=self.scenario.duration if self.scenario else None,
            extra={"modbus_rtu": self.modbus.rtu_path} if self.modbus else {},
        )

    def sync(self) -> None:
        """Bring the model to the clock's present (firing due scenario steps)."""
        if self.scenario_runner:
            self.scenario_runner.advance()
        else:
            self.site.advance_to(self.clock.now())

    def inject(self, action: str, target: str | None = None, value: Any = None) -> None:
        """Apply a scenario action now (raises ScenarioError if it is invalid)."""
        self.sync()
        apply_action(self.site, action, target, value)
        log.info("t=%.1f s: injected %s %s", self.site.time, action, target or "")

    async def wait_for(
        self, condition: Callable[[SimulatedSite], bool], timeout: float, what: str = "condition"
    ) -> None:
        """Wait (real seconds) until `condition(site)` holds; TimeoutError otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.sync()
            if condition(self.site):
                return
            if loop.time() >= deadline:
                raise TimeoutError(f"{what} not reached after {timeout} s (t={self.site.time:.1f})")
            await asyncio.sleep(min(self.options.tick, 0.02))


async def run_simulator(
    options: SimulatorOptions,
    *,
    ready: Callable[[SimulatorInfo], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the simulated site until `stop` is set (or the scenario ends, if the options say
    so; or forever, until cancelled)."""
    async with RunningSimulator(options) as sim:
        info = sim.info
        log.info(
            "simulated site %s: ports %s, scenario %s, speed x%g",
            info.site,
            info.ports,
            info.scenario or "none",
            info.speed,
        )
        if ready:
            ready(info)
        waits: list[asyncio.Task[Any]] = []
        if stop is not None:
            waits.append(asyncio.create_task(stop.wait()))
        if options.stop_at_scenario_end and sim.scenario_runner:
            waits.append(asyncio.create_task(sim.finished.wait()))
        if not waits:
            waits.append(asyncio.create_task(asyncio.Event().wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
