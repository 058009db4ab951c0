"""The policy part of the site file: topology, redundancy groups, hooks, shutdown and recovery.

Everything here is data the engine reads; nothing here runs anything.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from facility_agent.actions.ssh_config import SshTarget
from facility_agent.core.units import Duration, Identifier


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_names(value: Any) -> Any:
    """`env: NAME` or `env: [A, B]`: names of agent variables a command may see."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        for name in value:
            if isinstance(name, str) and not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
    return value


class Member(_Section):
    """One member of a redundancy group.

    Written in the site file either as a device id (`ups-a`: healthy while its comm is ok and,
    for a power group, it is on line) or as `device:metric` (`gw:uplink.wan-1.status`: healthy
    while that metric reads one of `ok_values`).
    """

    device: str
    metric: str | None = None

    @classmethod
    def parse(cls, text: str) -> Member:
        device, _, metric = text.partition(":")
        return cls(device=device, metric=metric or None)

    def __str__(self) -> str:
        return f"{self.device}:{self.metric}" if self.metric else self.device


class GroupConfig(_Section):
    id: Identifier
    #: power: members are UPS units (healthy = on line); network and psu: members are
    #: `device:metric` pairs such as uplink and PSU status.
    kind: Literal["power", "network", "psu", "other"] = "power"
    members: list[Member] = Field(min_length=1)
    #: How many healthy members the group needs; fewer is `lost`, fewer than all `degraded`.
    min: int = Field(default=1, ge=1)
    #: Metric values that count as healthy for `device:metric` members.
    ok_values: list[str] = Field(default_factory=lambda: ["up", "ok", "1", "true", "online"])
    #: A member must stay unhealthy this long before the group counts it, and healthy this long
    #: before it counts again: one missed poll or a blip does not page anyone.
    hold: Duration = 2.0

    @field_validator("members", mode="before")
    @classmethod
    def _parse_members(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Member.parse(v) if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _min_fits(self) -> GroupConfig:
        if self.min > len(self.members):
            raise ValueError(f"min ({self.min}) is larger than the number of members")
        return self


class HookConfig(_Section):
    """A command run on events: an argv list, never through a shell."""

    #: Event types that run it (`redundancy.degraded`, `power.*`, `*`). Not called `on`:
    #: YAML 1.1 reads a bare `on` key as the boolean true.
    events: list[str] = Field(min_length=1)
    run: list[str] = Field(min_length=1)
    #: Only events of these devices or groups (empty: all).
    only: list[str] = Field(default_factory=list)
    timeout: Duration = 30.0
    #: Agent environment variables the command sees besides PATH, HOME, TZ, LANG, LC_* and the
    #: event's FACILITY_* (default: none, so the site's secrets stay in the agent).
    env: list[str] = Field(default_factory=list)

    @field_validator("events", "only", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        return _env_names(value)


def _names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class VmStep(_Section):
    """`vm:` libvirt guests: shut down gracefully, destroyed after the step's timeout."""

    #: libvirt connection URI (`qemu:///system`, `qemu+ssh://root@host/system`, `qemu+tls://`).
    uri: str = "qemu:///system"
    #: Guest names or globs, in priority order: the guests of one entry stop together, entries
    #: one after another. Default: every running guest.
    guests: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    #: Destroy (pull the plug on) a guest still running at the step's timeout.
    destroy: bool = True
    #: On recovery, start again (in reverse order) the guests this plan stopped.
    start_on_recovery: bool = True
    #: Credentials for URIs that ask for them (SASL, a password); use `${ENV}` secrets.
    username: str | None = None
    password: SecretStr | None = None

    _one_or_many = field_validator("guests", mode="before")(_names)


class ContainersStep(_Section):
    """`containers:` Docker or Podman containers, through the engine's API socket."""

    #: The API socket (`unix:///run/podman/podman.sock`, `unix:///var/run/docker.sock`).
    socket: str = "unix:///var/run/docker.sock"
    #: Containers by name (or id), and compose projects (`com.docker.compose.project` label),
    #: in priority order: names first, then projects; each entry's containers stop together.
    names: list[str] = Field(default_factory=list)
    projects: list[str] = Field(default_factory=list)
    #: Seconds between SIGTERM and SIGKILL (the engine's stop timeout).
    grace: Duration = 10.0
    start_on_recovery: bool = True
    #: Docker API version spoken (Podman's compat API serves 1.40 and 1.41).
    api_version: str = "1.41"

    _one_or_many = field_validator("names", "projects", mode="before")(_names)

    @model_validator(mode="after")
    def _something(self) -> ContainersStep:
        if not self.names and not self.projects:
            raise ValueError("containers: needs names: or projects:")
        return self


class StepConfig(_Section):
    """One step of a plan: a command (`run`), a device action (`device` + `action`), a wait,
    libvirt guests (`vm`) or containers (`containers`)."""

    name: str | None = None
    run: list[str] | None = None
    device: str | None = None
    action: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    wait: Duration | None = None
    #: A command on a remote host over SSH (actions/ssh_config.py; docs/policy.md).
    ssh: SshTarget | None = None
    vm: VmStep | None = None
    containers: ContainersStep | None = None
    timeout: Duration = 120.0
    #: Action run on the same device to bring back what this step stopped (`power_on` after
    #: `soft_off`), when a plan is cancelled or recovery runs.
    undo: str | None = None
    #: What to do if the agent died while this step was running: `skip` (it may have done its
    #: work: never run twice) or `rerun` (safe for idempotent, verified actions such as IPMI
    #: power). Default: rerun for power actions, skip for everything else.
    resume: Literal["skip", "rerun"] | None = None
    #: Whether a failure stops the plan (`stop`) or the plan goes on (`continue`).
    on_failure: Literal["continue", "stop"] = "continue"
    #: For `run:` steps: agent environment variables the command sees besides PATH, HOME, TZ,
    #: LANG, LC_* and FACILITY_* (default: none).
    env: list[str] = Field(default_factory=list)

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        return _env_names(value)

    @model_validator(mode="after")
    def _one_kind(self) -> StepConfig:
        kinds = [self.run is not None, self.device is not None, self.wait is not None]
        kinds += [self.ssh is not None, self.vm is not None, self.containers is not None]
        if sum(kinds) != 1:
            raise ValueError(
                "a step is exactly one of: run: [argv], device: + action:, wait:, ssh:, vm:, "
                "containers:"
            )
        if (self.vm or self.containers) and (self.action or self.params or self.undo):
            raise ValueError("a vm:/containers: step takes no action:, params: or undo:")
        if self.device is not None and not self.action:
            raise ValueError("a device step needs an action")
        if self.run is not None and not self.run:
            raise ValueError("run: needs at least the program")
        if self.env and self.run is None:
            raise ValueError("env: only applies to a run: step")
        if self.undo and self.ssh is not None:
            raise ValueError(
                "undo: is a device action; a host an ssh: step stopped comes back by its BMC "
                "(a recovery step such as device: srv-01, action: power_on)"
            )
        return self

    @property
    def kind(self) -> str:
        if self.run is not None:
            return "run"
        if self.ssh is not None:
            return "ssh"
        if self.vm is not None:
            return "vm"
        if self.containers is not None:
            return "containers"
        return "device" if self.device is not None else "wait"

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.run is not None:
            return " ".join(self.run)
        if self.ssh is not None:
            return f"ssh {self.ssh.host}: {' '.join(self.ssh.run)}"
        if self.device is not None:
            return f"{self.device} {self.action}"
        if self.vm is not None:
            return "vm " + ", ".join(self.vm.guests)
        if self.containers is not None:
            c = self.containers
            return "containers " + ", ".join([*c.names, *(f"project {p}" for p in c.projects)])
        return f"wait {self.wait:g} s"

    @property
    def rerun_on_resume(self) -> bool:
        if self.resume is not None:
            return self.resume == "rerun"
        # vm/containers: every target is journaled, and stopping one already off is a no-op.
        return (
            self.kind in ("wait", "vm", "containers") or (self.action or "") in IDEMPOTENT_ACTIONS
        )


IDEMPOTENT_ACTIONS = frozenset({"soft_off", "hard_off", "power_on", "power_off"})


class StageConfig(_Section):
    name: str
    steps: list[StepConfig] = Field(min_length=1)
    #: From this stage on the plan is no longer cancelled when power returns (the UPS is told
    #: to cut its output, say): what follows is recovery's job.
    no_return: bool = False
    #: When this stage begins, the agent's NUT face (`nut_server:`) raises FSD on every UPS:
    #: the upsmon secondaries listening to it shut their hosts down now, in the plan's order.
    notify_nut_secondaries: bool = False


class LowBatteryTrigger(_Section):
    """Low battery, debounced, and believed only when the UPS also says it is on battery and
    every `confirm` condition holds (another source seeing the input gone)."""

    hold: Duration = 5.0
    confirm: list[ConfirmCondition] = Field(default_factory=list)


class ConfirmCondition(_Section):
    device: str
    metric: str
    below: float | None = None
    above: float | None = None
    equals: str | None = None

    def holds(self, value: Any) -> bool:
        if self.equals is not None:
            return str(value) == self.equals
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.below is not None and not value < self.below:
            return False
        return not (self.above is not None and not value > self.above)


class GeneratorTrigger(_Section):
    device: str
    #: Seconds after the group went on battery by which the generator must be running.
    after: Duration = 60.0
    metric: str = "generator.state"
    running: str = "running"


class Triggers(_Section):
    on_battery_for: Duration | None = None
    runtime_below: Duration | None = None
    #: Start when the runtime left is below the plan's expected duration plus this margin.
    runtime_margin: Duration | None = 120.0
    low_battery: LowBatteryTrigger | None = Field(default_factory=LowBatteryTrigger)
    fsd: bool = True
    #: NUT's dead-UPS rule: a member lost while last known on battery counts as critical.
    comm_lost_on_battery: bool = True
    generator_not_running: GeneratorTrigger | None = None
    #: A trigger condition must hold this long before it fires (low battery has its own).
    hold: Duration = 3.0
    #: A trigger whose input is unknown (a sentinel, a value outside its range) holds its last
    #: state; after this long it raises `policy.trigger_blind` (docs/policy.md).
    stale_after: Duration = 30.0


class ShutdownConfig(_Section):
    #: The power group whose loss this plan answers.
    group: str
    triggers: Triggers = Field(default_factory=Triggers)
    #: How long the plan takes until any target's time was learned (policy/durations.py):
    #: from then on each stage counts as long as its slowest learned (or bounded) step.
    expected_duration: Duration = 300.0
    #: Power must be back this long before a running plan is cancelled.
    cancel_after: Duration = 10.0
    #: After a plan ended, a new one starts only on a critical trigger (low battery, FSD, runtime)
    #: within this time: flapping power never starts a storm.
    cooldown: Duration = 600.0
    stages: list[StageConfig] = Field(min_length=1)


class RecoveryConfig(_Section):
    #: The power group must be on line this long ...
    stable_for: Duration = 60.0
    #: ... with every on-line member charged at least this much (%).
    min_charge: float = Field(default=50.0, ge=0, le=100)
    stages: list[StageConfig] = Field(default_factory=list)
    #: Attempts of each device step before it counts as failed.
    retries: int = Field(default=3, ge=1, le=20)


class PolicyConfig(_Section):
    """The part of SiteConfig the policy engine reads."""

    topology: dict[str, list[str]] = Field(default_factory=dict)
    groups: list[GroupConfig] = Field(default_factory=list)
    hooks: list[HookConfig] = Field(default_factory=list)
    shutdown: ShutdownConfig | None = None
    recovery: RecoveryConfig | None = None

    @property
    def active(self) -> bool:
        return bool(self.groups or self.hooks or self.shutdown)


LowBatteryTrigger.model_rebuild()
