"""Learned durations: what each target of the plan really took, and what the plan takes.

The journal keeps each target's measured time (table `timings`): an `ssh:` host, a `run:`
command, a device action, each libvirt guest, each container and each compose project. The
plan's expected duration is built from them the way the plan runs: stages one after another,
the steps of a stage in parallel, so a stage takes as long as its slowest step. Inside a `vm:`
or `containers:` step the priority entries run one after another and the targets of one entry
together. A target never measured counts with its bound (its timeout; a wait its time). The
runtime trigger thus waits for the slowest host, as Eaton's card waits for the agent with the
longest shutdown time, and a newly added host counts from the first day, with its timeout,
instead of vanishing in a median of whole runs.

Targets are keyed by what they are (`ssh root@db-01:22 systemctl poweroff`, `vm
qemu:///system db-1`), not by their place in the plan, so moving a host to another stage keeps
what was learned, and changing its command starts learning afresh.
"""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from facility_agent.actions.targets import groups, public_uri
from facility_agent.config.policy import StageConfig, StepConfig
from facility_agent.runtime.redact import redact

#: How many of a target's last measured times its median is taken over.
LAST = 5

#: The rows the learning reads: (target key, seconds), newest run first.
TIMINGS_SQL = (
    "SELECT t.target, t.duration FROM timings t JOIN runs r ON r.id = t.run_id"
    " WHERE r.kind = ? ORDER BY t.run_id DESC, t.stage, t.step"
)


def target_key(step: StepConfig) -> str | None:
    """The key of a step that is one target (`ssh:`, `run:`, device); None for the others.
    Secrets in it are masked: keys are journaled and shown in the runbook."""
    if step.ssh is not None:
        return redact(f"ssh {step.ssh.where} {shlex.join(step.ssh.run)}")
    if step.run is not None:
        return redact("run " + shlex.join(step.run))
    if step.device is not None:
        return f"device {step.device} {step.action}"
    return None


def scope(step: StepConfig) -> str | None:
    """The key prefix of a `vm:` or `containers:` step's targets (`vm test:///default`)."""
    if step.vm is not None:
        return redact(f"vm {public_uri(step.vm.uri)}")
    if step.containers is not None:
        return redact(f"containers {step.containers.socket}")
    return None


def project_target(project: str) -> str:
    """A compose project as a target of its own: its containers stop together."""
    return f"project:{project}"


def medians(rows: Iterable[tuple[str, float]], last: int = LAST) -> dict[str, float]:
    """Per target, the median of its `last` newest measured times (rows newest first)."""
    seen: dict[str, list[float]] = {}
    for key, seconds in rows:
        values = seen.setdefault(str(key), [])
        if len(values) < last and seconds is not None:
            values.append(float(seconds))
    return {k: statistics.median(v) for k, v in seen.items() if v}


def merged(real: Mapping[str, float], drills: Mapping[str, float]) -> dict[str, float]:
    """Real runs first; a target only drills have measured keeps the drills' figure."""
    return {**drills, **real}


@dataclass
class StepEstimate:
    seconds: float
    #: (target, learned seconds) that fed the estimate, in plan order.
    learned: list[tuple[str, float]] = field(default_factory=list)
    #: Targets (or entries) counted with their bound: nothing measured yet.
    bounded: list[str] = field(default_factory=list)


def _entry_bound(step: StepConfig) -> float:
    if step.containers is not None:
        return min(float(step.containers.grace), float(step.timeout))
    return float(step.timeout)


def estimate_step(step: StepConfig, learned: Mapping[str, float]) -> StepEstimate:
    """What one step is expected to take, from its targets' learned times."""
    if step.wait is not None:
        return StepEstimate(float(step.wait))
    key = target_key(step)
    if key is not None:
        if key in learned:
            return StepEstimate(learned[key], [(key, learned[key])])
        return StepEstimate(float(step.timeout), bounded=[key])
    prefix = f"{scope(step)} "
    est = StepEstimate(0.0)
    entries: list[tuple[str, list[str]]] = []
    if step.vm is not None:
        names = [k[len(prefix) :] for k in learned if k.startswith(prefix)]
        entries = list(zip(step.vm.guests, groups(names, step.vm.guests), strict=True))
    elif step.containers is not None:
        c = step.containers
        entries = [(n, [n]) for n in c.names]
        entries += [(f"project {p}", [project_target(p)]) for p in c.projects]
    for entry, targets in entries:
        times = [(prefix + t, learned[prefix + t]) for t in targets if prefix + t in learned]
        if times:
            est.learned += times
            est.seconds += max(s for _, s in times)
        else:
            est.bounded.append(f"{prefix}{entry}")
            est.seconds += _entry_bound(step)
    return est


@dataclass
class PlanEstimate:
    seconds: float
    stages: list[float]
    steps: list[list[StepEstimate]]

    @property
    def learned_any(self) -> bool:
        return any(s.learned for stage in self.steps for s in stage)


def estimate_plan(stages: Sequence[StageConfig], learned: Mapping[str, float]) -> PlanEstimate:
    """The plan's expected duration: each stage its slowest step, the stages added up."""
    steps = [[estimate_step(st, learned) for st in stage.steps] for stage in stages]
    per_stage = [max((s.seconds for s in stage), default=0.0) for stage in steps]
    return PlanEstimate(sum(per_stage), per_stage, steps)
