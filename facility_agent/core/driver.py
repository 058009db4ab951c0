"""The driver plugin interface.

A driver knows one protocol and nothing of policy. It is a class registered under the
`facility_agent.drivers` entry-point group; the built-in ones are registered the same way, so a
third-party driver is one module plus one line in its own pyproject:

    [project.entry-points."facility_agent.drivers"]
    mydriver = "my_package.my_module:MyDriver"

The poller owns the schedule: it calls `poll()` under its own timeout, so a driver never needs a
timer of its own, and a hung device never holds up another one.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from facility_agent.core.model import DeviceState, Event, Sample
from facility_agent.core.units import Duration, Identifier


class AddCommand(Protocol):
    """Makes one `facility-agent NAME` command: the global options (--log-level ...), `help` as
    its description too, `func` its handler (returns the exit code); `config`: it takes the
    site file (`-c/--config`). Returns the command's parser, for its own arguments."""

    def __call__(
        self,
        name: str,
        help: str,
        func: Callable[[argparse.Namespace], int],
        *,
        config: bool = False,
    ) -> argparse.ArgumentParser: ...


class DeviceConfig(BaseModel):
    """Keys every device has; a driver subclasses it with its own keys (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier
    driver: str
    #: Time between the starts of two polls.
    interval: Duration = 2.0
    #: Deadline of one poll; defaults to the interval, capped at 5 s.
    timeout: Duration | None = None
    #: Consecutive failed polls before the device is reported `comm: lost` (NUT's DEADTIME).
    lost_after: int = Field(default=3, ge=1, le=1000)
    #: Random offset of the first poll, as a fraction of the interval, so devices do not all
    #: poll in the same instant.
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)
    #: Upper bound of the exponential back-off between retries while a device is lost: also
    #: how late a device that comes back can be seen (at most this x 1.1, plus one poll).
    backoff_max: Duration = 5.0
    #: Poll interval while the device is degraded (on battery, lost ...); NUT's POLLFREQALERT.
    alert_interval: Duration | None = None
    #: Whether device actions (commands, SET VAR ...) may be sent to it.
    allow_writes: bool = False

    #: A poll's timeout when `timeout` is not set: the interval, capped at this.
    timeout_cap: ClassVar[float] = 5.0

    @property
    def poll_timeout(self) -> float:
        return self.timeout if self.timeout is not None else min(self.interval, self.timeout_cap)

    def require_writes(self) -> None:
        """Raise ActionError unless the site file lets actions reach this device: a driver's
        `run_action` asks first, so no driver can forget it."""
        if not self.allow_writes:
            raise ActionError(
                f"device {self.id}: actions are disabled (set allow_writes: true to allow them)"
            )


C = TypeVar("C", bound=DeviceConfig)


def own_config(config: DeviceConfig, model: type[C]) -> C:
    """`config` as the driver's own model: a plain DeviceConfig (a test's, a plugin host's) is
    validated into it, so a missing or wrong key fails here, not at the first poll."""
    return config if isinstance(config, model) else model.model_validate(config.model_dump())


def with_keys(config: C, **keys: Any) -> C:
    """`config` with some of its keys changed, validated again (a drill aiming a device at
    the simulator)."""
    return type(config).model_validate({**config.model_dump(), **keys})


class DeviceError(Exception):
    """A device did not give a usable answer. `reason` is shown to people: no secrets in it."""

    #: True when retrying cannot help until someone changes something (bad credentials, a UPS
    #: name that does not exist): the device is reported lost at once instead of after
    #: `lost_after` misses, and still retried with back-off.
    permanent: ClassVar[bool] = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeviceTimeout(DeviceError):
    """The device did not answer within the poll's deadline."""


class ProtocolError(DeviceError):
    """The device answered something the protocol does not allow."""


class AuthError(DeviceError):
    """The device refused our credentials."""

    permanent = True


class NotFoundError(DeviceError):
    """The device (or the UPS name on it) does not exist."""

    permanent = True


class ActionError(DeviceError):
    """A device action was refused or failed."""


@dataclass(frozen=True)
class AlertFlags:
    """Which status flags mean trouble: `own` ones poll the device at its `alert_interval`
    (NUT's POLLFREQALERT); `site` ones (power trouble) put every device of the site in alert
    mode, since during an outage the whole power path matters."""

    own: frozenset[str] = frozenset()
    site: frozenset[str] = frozenset()


class SiteService(ABC):
    """A site-wide listener a driver runs beside its devices (SNMP traps, the NUT face)."""

    @abstractmethod
    async def stop(self) -> None: ...

    def drill_lines(self, decided: float | None, runtime: float | None) -> list[str]:
        """What a drill's report says of this service once the drill is over: `decided` is
        when (monotonic) the shutdown was decided, `runtime` the real seconds of battery left
        then (None: not known). Most services have nothing to say."""
        return []


class SimulatorFaces(Protocol):
    """Where the bundled simulator serves the site, as a drill aims the devices at it."""

    @property
    def ports(self) -> Mapping[str, int]:
        """Face name -> loopback port: `nut`, `snmp`, `modbus`, `ipmi:<device id>` ..."""
        ...

    @property
    def ups(self) -> Sequence[str]:
        """The names of the simulated UPS units."""
        ...


@dataclass(frozen=True)
class SiteHooks:
    """What a driver's site-wide service may use of the running agent, and nothing more."""

    site: str
    #: Every device of the site (a service picks its own driver's).
    devices: Sequence[DeviceConfig]
    #: The site-file sections this driver declared (`Driver.site_sections`) that are present.
    sections: Mapping[str, BaseModel]
    emit: Callable[[Event], None]
    #: Poll a device now, out of its schedule (a trap says something changed).
    poll_now: Callable[[str], None]
    states: Callable[[], Mapping[str, DeviceState]]
    #: True while the shutdown plan asks upsmon secondaries to shut down.
    secondaries_fsd: Callable[[], bool]
    #: Runs a long-lived task under the agent's supervisor: `spawn(name, factory)`.
    spawn: Callable[[str, Callable[[], Coroutine[Any, Any, None]]], Any]
    #: A drill without effects: a service must not act on anything outside the box.
    dry_run: bool = False


class Driver(ABC):
    """One instance per configured device; the class may also own one site-wide service.

    Only `poll` is required. The rest are optional seams with defaults, so that the agent never
    asks a driver what it can do with `getattr`."""

    #: The name used in the site file's `driver:` key.
    name: ClassVar[str]
    #: The pydantic model of this driver's device keys.
    config_model: ClassVar[type[DeviceConfig]] = DeviceConfig
    #: Top-level sections of the site file this driver owns (`traps:` of the SNMP driver),
    #: validated by these models and handed to `start_site`.
    site_sections: ClassVar[Mapping[str, type[BaseModel]]] = {}
    #: The metrics the driver reports by itself rather than through a profile, in a phrase
    #: for docs/reference.md (empty: all of them come from profiles).
    metrics_doc: ClassVar[str] = ""

    @classmethod
    async def start_site(cls, hooks: SiteHooks) -> SiteService | None:
        """Start the driver's site-wide service if the site asks for one. Called once per
        start (and again on a reload that changes devices or sections), before any poll.
        A service that cannot start logs why and returns None: polling goes on without it."""
        return None

    @classmethod
    def add_commands(cls, command: AddCommand) -> None:
        """Add the driver's own `facility-agent` commands (the SNMP driver's `snmp record`)."""
        return None

    @classmethod
    def aim_at_simulator(cls, device: DeviceConfig, sim: SimulatorFaces) -> DeviceConfig | None:
        """For a drill: the device pointed at its counterpart in the bundled simulator (the
        same id), or None when the simulator has none; the drill then leaves it out."""
        return None

    @classmethod
    def add_drill_options(cls, parser: argparse.ArgumentParser) -> None:
        """Add the driver's options to `facility-agent drill` (the NUT driver's
        `--nut-face-listen`); `drill_sections` gets their values."""
        return None

    @classmethod
    def drill_sections(
        cls, sections: Mapping[str, BaseModel], options: Mapping[str, Any]
    ) -> dict[str, BaseModel]:
        """The driver's site sections that are present, as a drill runs them: nothing a drill
        does may reach the site's real peers (the NUT face moves to a loopback port).
        `options` holds the drill's command-line options by their `dest`."""
        return dict(sections)

    @classmethod
    async def probe(cls, devices: Sequence[DeviceConfig]) -> bool:
        """`check --probe`: reach this driver's devices once and print what was found (the
        profile `profile: auto` picked, and why). False when one of them cannot be used."""
        return True

    @classmethod
    def declared_events(cls) -> list[dict[str, str]]:
        """Every flag event the driver itself may declare (for docs/reference.md); profile
        events are listed from the profiles."""
        return []

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config

    @abstractmethod
    async def poll(self) -> Sample:
        """Read the device once. Raises DeviceError (or any exception) on failure."""

    def flag_events(self) -> list[dict[str, str]]:
        """What this device's status flags mean as events (`flag`, `type`, `severity`,
        `cleared_type`), read by the site state. Most drivers' flags have none of their own."""
        return []

    def alert_flags(self) -> AlertFlags:
        """Which of this device's flags mean trouble (see AlertFlags); asked after each poll,
        so a profile detected on the first poll (`profile: auto`) counts from then on."""
        return AlertFlags()

    async def close(self) -> None:  # noqa: B027 - optional hook, most drivers hold a connection
        """Release connections. Called once when the agent stops or the device is removed."""

    async def actions(self) -> list[str]:
        """Names of the actions the device offers (NUT instant commands, genset start ...)."""
        return []

    async def run_action(self, action: str, params: Mapping[str, str] | None = None) -> str:
        """Run one action; returns a short human-readable outcome, raises ActionError."""
        raise ActionError(f"driver {self.name!r} has no action {action!r}")
