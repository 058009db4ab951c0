"""Pure evaluation of the site's states against the policy: no I/O, time passed in.

Kept apart from the engine so every rule (debounce, hysteresis, corroboration, the dead-UPS
rule) can be tested with nothing but states and a clock value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from facility_agent.config.policy import ConfirmCondition, GroupConfig, Member
from facility_agent.core.model import DeviceState, MetricValue

GroupStatus = Literal["ok", "degraded", "lost"]


class Held:
    """A condition that counts only after holding for `hold` seconds (hysteresis by time)."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.since: float | None = None

    def update(self, condition: bool, now: float) -> bool:
        if not condition:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.hold

    @property
    def pending(self) -> bool:
        return self.since is not None


class Blind:
    """How long a trigger's input has been unknown: after `stale_after` the trigger is blind
    (raise the alert once), and it sees again when the input is known again (clear it once)."""

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self.since: float | None = None
        self.raised = False

    def update(self, unknown: bool, now: float) -> Literal["blind", "sees"] | None:
        if not unknown:
            self.since = None
            if self.raised:
                self.raised = False
                return "sees"
            return None
        if self.since is None:
            self.since = now
        if not self.raised and now - self.since >= self.stale_after:
            self.raised = True
            return "blind"
        return None


def unknown_inputs(
    group: GroupConfig,
    states: Mapping[str, DeviceState],
    confirm: list[ConfirmCondition],
    generator: tuple[str, str] | None,
) -> dict[str, list[str]]:
    """Per trigger, the inputs that are unknown now (`ups-a battery.runtime`): a trigger with
    any holds instead of deciding. Flags are never unknown, so FSD and on-battery never are."""
    out: dict[str, list[str]] = {"runtime": [], "low_battery": [], "generator": [], "recovery": []}
    for member in group.members:
        st = states.get(member.device)
        if st is None or st.comm != "ok":
            continue
        if "battery.runtime" in st.unknown and "OFF" not in st.status:
            out["runtime"].append(f"{member.device} battery.runtime")
        if "battery.charge" in st.unknown and "OL" in st.status:
            out["recovery"].append(f"{member.device} battery.charge")
    for cond in confirm:
        st = states.get(cond.device)
        if st is not None and cond.metric in st.unknown:
            out["low_battery"].append(f"{cond.device} {cond.metric}")
    if generator is not None:
        st = states.get(generator[0])
        if st is not None and generator[1] in st.unknown:
            out["generator"].append(f"{generator[0]} {generator[1]}")
    return out


def _num(metrics: Mapping[str, MetricValue], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def member_healthy(group: GroupConfig, member: Member, state: DeviceState | None) -> bool:
    if state is None or state.comm != "ok":
        return False
    if member.metric is not None:
        value = state.metrics.get(member.metric)
        return str(value).strip().lower() in {v.lower() for v in group.ok_values}
    if group.kind == "power":
        flags = set(state.status)
        return "OL" in flags and not flags & {"OB", "OFF", "FSD"}
    return True


@dataclass
class GroupView:
    status: GroupStatus
    healthy: int
    down: list[str]

    def payload_metrics(self, group: GroupConfig) -> dict[str, MetricValue]:
        return {
            "redundancy.healthy": self.healthy,
            "redundancy.members": len(group.members),
            "redundancy.min": group.min,
        }


class GroupEvaluator:
    """A group's status, each member's health debounced by the group's `hold`."""

    def __init__(self, group: GroupConfig) -> None:
        self.group = group
        self._counted: dict[str, bool] = {}
        self._flip: dict[str, Held] = {str(m): Held(group.hold) for m in group.members}
        self.view: GroupView | None = None

    def update(self, states: Mapping[str, DeviceState], now: float) -> GroupView:
        down = []
        for member in self.group.members:
            key = str(member)
            state = states.get(member.device)
            raw = member_healthy(self.group, member, state)
            # A member read through a metric whose value is unknown is neither healthy nor
            # unhealthy: it keeps its count (and a pending flip) until the value is known.
            unknown = (
                member.metric is not None
                and state is not None
                and state.comm == "ok"
                and member.metric in state.unknown
            )
            if unknown:
                pass
            elif key not in self._counted:
                # No history yet: take the first reading as it is, so a site that starts up
                # degraded says so at once.
                if state is not None:
                    self._counted[key] = raw
            elif self._flip[key].update(raw != self._counted[key], now):
                self._counted[key] = raw
                self._flip[key].since = None
            if not self._counted.get(key, False):
                down.append(key)
        healthy = len(self.group.members) - len(down)
        status: GroupStatus
        if healthy >= len(self.group.members):
            status = "ok"
        elif healthy >= self.group.min:
            status = "degraded"
        else:
            status = "lost"
        self.view = GroupView(status, healthy, down)
        return self.view

    @property
    def ready(self) -> bool:
        """Every member has been heard from at least once."""
        return len(self._counted) == len(self.group.members)


@dataclass
class PowerView:
    """What a power group's UPS units say together."""

    online: list[str] = field(default_factory=list)
    on_battery: list[str] = field(default_factory=list)
    low_battery: list[str] = field(default_factory=list)
    unconfirmed_low: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    fsd: list[str] = field(default_factory=list)
    runtime: float | None = None
    min_charge: float | None = None

    def on_battery_group(self, need: int) -> bool:
        """Fewer than `need` members on line while some run on battery (or went quiet on it).
        Outputs switched off on purpose, after a shutdown, are not a power problem."""
        return len(self.online) < need and bool(self.on_battery or self.dead)

    def critical(self, need: int, count_dead: bool) -> bool:
        """On battery, and fewer than `need` members can still carry the load: low battery
        (believed), FSD, or lost while on battery (NUT's dead-UPS rule). Outputs switched off
        on purpose and members on line are not a reason."""
        if not self.on_battery_group(need):
            return False
        bad = set(self.low_battery) | set(self.fsd)
        if count_dead:
            bad |= set(self.dead)
        carrying = set(self.online) | (set(self.on_battery) - bad)
        if not count_dead:
            carrying |= set(self.dead)
        return len(carrying) < need


def confirmed(conditions: list[ConfirmCondition], states: Mapping[str, DeviceState]) -> bool:
    for cond in conditions:
        st = states.get(cond.device)
        if st is None or st.comm != "ok" or not cond.holds(st.metrics.get(cond.metric)):
            return False
    return True


def power_view(
    group: GroupConfig,
    states: Mapping[str, DeviceState],
    confirm: list[ConfirmCondition] | None = None,
) -> PowerView:
    view = PowerView()
    runtimes: list[float] = []
    charges: list[float] = []
    others_confirm = confirmed(confirm or [], states)
    for member in group.members:
        st = states.get(member.device)
        if st is None:
            continue
        flags = set(st.status)
        if st.comm != "ok":
            # NUT's rule: a UPS gone quiet while on battery is as good as flat; one gone quiet
            # while on line is assumed to still be on line (comm loss is not power loss).
            if "OB" in flags:
                view.dead.append(member.device)
            elif "OL" in flags:
                view.online.append(member.device)
            continue
        if "FSD" in flags:
            view.fsd.append(member.device)
        if "OB" in flags:
            view.on_battery.append(member.device)
        elif "OL" in flags and "OFF" not in flags:
            view.online.append(member.device)
        if "LB" in flags:
            # A low-battery flag is believed only from a UPS that also says it is on battery
            # and when every other configured source agrees the input is gone: a spurious LB
            # alone never powers a rack off.
            if "OB" in flags and others_confirm:
                view.low_battery.append(member.device)
            else:
                view.unconfirmed_low.append(member.device)
        if "OFF" not in flags:
            runtime = _num(st.metrics, "battery.runtime")
            if runtime is not None:
                runtimes.append(runtime)
        charge = _num(st.metrics, "battery.charge")
        if charge is not None and member.device in view.online:
            charges.append(charge)
    runtimes.sort(reverse=True)
    # The group keeps `min` members up for as long as its min-th best battery lasts.
    view.runtime = runtimes[group.min - 1] if len(runtimes) >= group.min else 0.0
    view.min_charge = min(charges) if charges else None
    return view


def metric(states: Mapping[str, DeviceState], device: str, name: str) -> Any:
    st = states.get(device)
    return None if st is None else st.metrics.get(name)
