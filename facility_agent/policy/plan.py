"""Runs one plan: stages in order, the steps of a stage in parallel, every step journaled.

The runner can start a plan or resume one the journal says was running when the agent died:
steps done are not run again, the step that was in the middle is re-run only when it is a
verified, idempotent action (`resume: rerun`) and is otherwise counted as interrupted, and the
rest runs as planned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from facility_agent.actions.hooks import run_hook
from facility_agent.actions.targets import TargetLog, stopped_by
from facility_agent.config.policy import StageConfig, StepConfig
from facility_agent.core.driver import Driver
from facility_agent.policy.durations import scope, target_key
from facility_agent.policy.journal import Journal

log = logging.getLogger(__name__)

#: (step, stage index, step index, outcome ok, detail, duration)
StepListener = Callable[["StepOutcome"], None]


@dataclass(frozen=True, slots=True)
class StepOutcome:
    stage: int
    step: int
    label: str
    ok: bool
    detail: str
    duration: float
    skipped: bool = False


@dataclass
class StepContext:
    """What a step needs from the world: device drivers and the plan's description."""

    drivers: Mapping[str, Driver]
    event: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    #: (target, event type, message): a critical event from inside a step (a changed host key).
    alert: Callable[[str, str, str], None] | None = None
    #: The journal and (run, stage, step) of the step being run: vm:/containers: steps journal
    #: each of their targets there.
    journal: Journal | None = None
    position: tuple[int, int, int] | None = None


#: The action of the recovery copy of a vm:/containers: step (`params: {of: run:stage:step}`).
START = "start"


def start_copy(step: StepConfig, position: tuple[int, int, int]) -> StepConfig:
    """The recovery step that starts again what `step` stopped in the run at `position`."""
    of = ":".join(str(p) for p in position)
    return step.model_copy(
        update={"action": START, "params": {"of": of}, "name": f"start {step.label}"}
    )


async def _targets_step(step: StepConfig, ctx: StepContext) -> tuple[bool, str]:
    # Imported here: libvirt and the docker SDK cost ~0.25 s, paid only by sites that use them.
    from facility_agent.actions import containers, libvirt_guests

    log = TargetLog(ctx.journal, ctx.position, None if step.action == START else scope(step))
    if step.action == START:
        if ctx.dry_run:
            return True, f"dry run: would start again what {step.label[6:]} stopped"
        assert ctx.journal is not None
        run, stage, index = (int(p) for p in step.params["of"].split(":"))
        names = list(reversed(stopped_by(ctx.journal, (run, stage, index))))
        if step.vm is not None:
            return await libvirt_guests.start_guests(step.vm, names, log)
        assert step.containers is not None
        return await containers.start_containers(step.containers, names, step.timeout, log)
    if step.vm is not None:
        return await libvirt_guests.stop_guests(step.vm, step.timeout, log, ctx.dry_run)
    assert step.containers is not None
    return await containers.stop_containers(step.containers, step.timeout, log, ctx.dry_run)


async def execute_step(
    step: StepConfig, ctx: StepContext, action: str | None = None
) -> tuple[bool, str]:
    """Run one step; `action` overrides the step's (used for undo). Never raises for the
    step's own failure: returns (ok, what happened)."""
    if step.kind == "wait":
        assert step.wait is not None
        await asyncio.sleep(step.wait)
        return True, f"waited {step.wait:g} s"
    if step.kind == "run":
        assert step.run is not None
        if ctx.dry_run:
            return True, "dry run: would run " + " ".join(step.run)
        result = await run_hook(step.run, timeout=step.timeout, event=ctx.event, pass_env=step.env)
        detail = result.describe()
        if result.output.strip():
            detail += ": " + result.output.strip().splitlines()[-1][:200]
        return result.ok, detail
    if step.kind == "ssh":
        assert step.ssh is not None
        if ctx.dry_run:
            return True, f"dry run: would run on {step.ssh.where}: " + " ".join(step.ssh.run)
        from facility_agent.actions.ssh_hosts import run_ssh

        remote = await run_ssh(step.ssh, step.timeout, ctx.alert)
        return remote.ok, remote.detail
    if step.kind in ("vm", "containers"):
        return await _targets_step(step, ctx)
    assert step.device is not None
    name = action or step.action or ""
    driver = ctx.drivers.get(step.device)
    if driver is None:
        return False, f"no device {step.device!r} in this agent"
    try:
        async with asyncio.timeout(step.timeout):
            outcome = await driver.run_action(name, dict(step.params))
    except TimeoutError:
        return False, f"{step.device} {name}: no outcome within {step.timeout:g} s"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        return False, f"{step.device} {name}: {reason}"
    return True, str(outcome)


@dataclass(eq=False)
class PlanRunner:
    """Runs the stages of one journaled plan run, from the first stage not yet done.

    The steps of a stage run in parallel; the next stage starts when all of them ended (or
    failed, per `on_failure`). Each step is marked `started` durably before it runs and
    `done`/`failed` after, so a restart resumes exactly at the step that was interrupted."""

    journal: Journal
    run_id: int
    stages: list[StageConfig]
    ctx: StepContext
    on_step: StepListener | None = None
    execute: Callable[[StepConfig, StepContext], Awaitable[tuple[bool, str]]] = execute_step
    #: The stage running now (or next, while none is).
    stage: int = field(default=0, init=False)
    failed: bool = field(default=False, init=False)
    no_return_reached: bool = field(default=False, init=False)
    #: A stage with `notify_nut_secondaries` has begun: the NUT face shows FSD.
    secondaries_notified: bool = field(default=False, init=False)

    @property
    def past_no_return(self) -> bool:
        """True once a `no_return` stage has begun: cancelling would leave things half off."""
        return self.no_return_reached

    async def run(self, resume: bool = False) -> bool:
        """Run (or resume) every stage; True when every step that had to succeed did."""
        done: dict[tuple[int, int], str] = {}
        if resume:
            done = {(s.stage, s.step): s.state for s in self.journal.steps(self.run_id)}
        for si, stage in enumerate(self.stages):
            finished = ("done", "failed", "interrupted")
            if resume and all(done.get((si, ti)) in finished for ti in range(len(stage.steps))):
                self._reach(stage)
                continue
            self.stage = si
            self._reach(stage)
            await self.journal.durable(self.journal.reach_stage(self.run_id, si))
            results = await asyncio.gather(
                *(
                    self._step(si, ti, step, done.get((si, ti)))
                    for ti, step in enumerate(stage.steps)
                )
            )
            if not all(results):
                self.failed = True
                log.warning("stage %r of the plan stopped on a failed step", stage.name)
                return False
        return not self.failed

    def _reach(self, stage: StageConfig) -> None:
        self.no_return_reached = self.no_return_reached or stage.no_return
        self.secondaries_notified = self.secondaries_notified or stage.notify_nut_secondaries

    async def _step(self, si: int, ti: int, step: StepConfig, before: str | None) -> bool:
        if before in ("done", "failed"):
            return before == "done" or step.on_failure == "continue"
        if before == "interrupted" or (before == "started" and not step.rerun_on_resume):
            if before == "started":
                await self.journal.durable(
                    self.journal.step_ended(
                        self.run_id,
                        si,
                        ti,
                        "interrupted",
                        "the agent stopped while this step ran; not run again",
                    )
                )
            self._tell(
                StepOutcome(
                    si,
                    ti,
                    step.label,
                    True,
                    "interrupted by an agent restart; not run again",
                    0.0,
                    True,
                )
            )
            return True
        # Durably `started` before it runs; on the journal's thread, so the loop goes on.
        await self.journal.durable(self.journal.step_started(self.run_id, si, ti, step.label))
        started = time.monotonic()
        try:
            ctx = replace(self.ctx, journal=self.journal, position=(self.run_id, si, ti))
            ok, detail = await self.execute(step, ctx)
        except asyncio.CancelledError:
            # Queued, in order, not awaited: the cancellation goes on at once.
            self.journal.step_ended(self.run_id, si, ti, "interrupted", "plan cancelled")
            raise
        took = time.monotonic() - started
        await self.journal.durable(
            self.journal.step_ended(self.run_id, si, ti, "done" if ok else "failed", detail)
        )
        key = target_key(step)
        if ok and key is not None and not self.ctx.dry_run:
            # What this host (command, device action) took feeds the plan's expected duration.
            self.journal.target_time((self.run_id, si, ti), key, took)
        self._tell(StepOutcome(si, ti, step.label, ok, detail, took))
        return ok or step.on_failure == "continue"

    def _tell(self, outcome: StepOutcome) -> None:
        if self.on_step is not None:
            try:
                self.on_step(outcome)
            except Exception:
                log.exception("a step listener failed")
