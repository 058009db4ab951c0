"""The policy engine: redundancy groups, triggers, the shutdown plan, recovery and hooks.

It knows conditions and plans and nothing of protocols: it reads device states, raises events,
and acts only through driver actions and argv hooks. Every decision it takes is a function of
states and time (`evaluate.py`); every plan it runs is journaled (`journal.py`), so a restart
resumes where the last agent stopped.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from facility_agent.actions.hooks import run_hook
from facility_agent.actions.targets import stopped_by
from facility_agent.config.policy import PolicyConfig, StageConfig, StepConfig
from facility_agent.core.driver import Driver
from facility_agent.core.model import DeviceState, Event, Severity, utcnow
from facility_agent.policy.durations import estimate_plan, merged
from facility_agent.policy.evaluate import (
    Blind,
    GroupEvaluator,
    GroupView,
    Held,
    PowerView,
    metric,
    power_view,
    unknown_inputs,
)
from facility_agent.policy.journal import Journal, RunRecord
from facility_agent.policy.plan import (
    PlanRunner,
    StepContext,
    StepOutcome,
    execute_step,
    start_copy,
)
from facility_agent.runtime.state import SiteState
from facility_agent.runtime.supervise import Supervisor

log = logging.getLogger(__name__)

TICK = 0.25
#: Drills journal apart from real runs; real runs are preferred when learning durations.
DRILL_JOURNAL = "drill-journal.sqlite"
#: How long a stopping agent lets the running stage finish before it leaves the rest to the
#: next start (the journal keeps the plan `running`).
STOP_GRACE = 10.0


def trigger_holds(policy: PolicyConfig) -> dict[str, Held]:
    """One debouncer per trigger of the shutdown section."""
    sd = policy.shutdown
    if sd is None:
        return {}
    trig = sd.triggers
    gen = trig.generator_not_running
    return {
        "on_battery": Held(trig.on_battery_for or 0.0),
        "runtime": Held(trig.hold),
        "low_battery": Held(trig.low_battery.hold if trig.low_battery else 0.0),
        "fsd": Held(0.0),
        "generator": Held(gen.after if gen else 0.0),
    }


class PolicyEngine:
    """Decides and acts for one site: evaluates the redundancy groups and the shutdown
    triggers on every new state and on a tick, runs the shutdown plan and then recovery as
    journaled tasks (`PlanRunner`), and fires the hooks events match.

    The decisions are pure (`evaluate.py`); this class owns the timing, the tasks and their
    cancellation (power back before the point of no return cancels a plan), and resumes an
    interrupted plan from the journal at start."""

    def __init__(
        self,
        policy: PolicyConfig,
        state: SiteState,
        drivers: Mapping[str, Driver],
        emit: Callable[[Event], None],
        publish_state: Callable[[DeviceState], None],
        journal_path: Path,
        *,
        dry_run: bool = False,
        drill: bool = False,
        clock: Callable[[], float] = time.monotonic,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.policy = policy
        self.state = state
        self.drivers = drivers
        self.emit_event = emit
        self.publish_state = publish_state
        self.journal = Journal(journal_path)
        self.dry_run = dry_run
        self.drill = drill
        self.clock = clock
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.groups = {g.id: GroupEvaluator(g) for g in policy.groups}
        self._group_status: dict[str, str] = {}
        self._tick_task: asyncio.Task[None] | None = None
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self.plan_task: asyncio.Task[None] | None = None
        self.plan: PlanRunner | None = None
        self.plan_reason = ""
        self.recovery_task: asyncio.Task[None] | None = None
        self.recovery_pending = False
        self._stopping = False
        self._last_plan_end: float | None = None
        self._unconfirmed_warned: set[str] = set()
        #: The power group's runtime when the last trigger was evaluated (for drill reports).
        self.last_runtime: float | None = None
        self._expected: float | None = None
        #: A plan ran to its end: the site is down on purpose until recovery has run, and no
        #: new plan may start meanwhile (the outputs it switched off are not a new outage).
        self.site_down = False
        sd = policy.shutdown
        self._held: dict[str, Held] = trigger_holds(policy)
        self._cancel_held = Held(sd.cancel_after if sd else 0.0)
        self._recover_held = Held(policy.recovery.stable_for if policy.recovery else 0.0)
        #: Per trigger: how long its input has been unknown (policy.trigger_blind).
        self._blind: dict[str, Blind] = {}

    @property
    def site(self) -> str:
        """The site's name, as the state it decides on knows it."""
        return self.state.site

    def reconfigure(self, new: PolicyConfig) -> list[str]:
        """Swap in a reloaded policy: evaluators of unchanged groups keep their debounce
        history (no redundancy event is raised again), trigger and recovery timers restart only
        where their section changed. Returns the ids of groups that are gone."""
        old = self.policy
        self.policy = new
        groups: dict[str, GroupEvaluator] = {}
        for group in new.groups:
            kept = self.groups.get(group.id)
            groups[group.id] = (
                kept if kept is not None and kept.group == group else GroupEvaluator(group)
            )
        gone = sorted(set(self.groups) - set(groups))
        for group_id in gone:
            self._group_status.pop(group_id, None)
        self.groups = groups
        if old.shutdown != new.shutdown:
            self._held = trigger_holds(new)
            self._blind = {}
            self._cancel_held = Held(new.shutdown.cancel_after if new.shutdown else 0.0)
            self._expected = None
        if old.recovery != new.recovery:
            self._recover_held = Held(new.recovery.stable_for if new.recovery else 0.0)
        return gone

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        sd = self.policy.shutdown
        if sd is not None:
            unfinished = self.journal.unfinished("shutdown")
            if unfinished is not None:
                log.warning(
                    "resuming shutdown run %d (%s) from the journal",
                    unfinished.id,
                    unfinished.reason,
                )
                self._start_plan(unfinished.reason, resume=unfinished)
            else:
                last = self.journal.last_run()
                ended = last is not None and last.kind == "shutdown"
                self.recovery_pending = (
                    ended
                    and last is not None
                    and last.state
                    in (
                        "completed",
                        "cancelled",
                    )
                )
                self.site_down = ended and last is not None and last.state == "completed"
            unfinished_recovery = self.journal.unfinished("recovery")
            if unfinished_recovery is not None and self.plan_task is None:
                self._start_recovery(resume=unfinished_recovery)
        self._tick_task = self.supervisor.spawn("policy", self._ticker)

    async def stop(self) -> None:
        self._stopping = True
        if self._tick_task is not None:
            self._tick_task.cancel()
            await asyncio.gather(self._tick_task, return_exceptions=True)
        for task in (self.plan_task, self.recovery_task):
            if task is not None and not task.done():
                # Let the running stage finish; what is left stays `running` in the journal.
                done, _ = await asyncio.wait({task}, timeout=STOP_GRACE)
                if not done:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        if self._hook_tasks:
            await asyncio.wait(self._hook_tasks, timeout=STOP_GRACE)
        self.journal.close()

    async def _ticker(self) -> None:
        failing = False
        while True:
            try:
                self.evaluate()
            except Exception:
                # Once per episode with the traceback, not four times a second.
                log.log(logging.DEBUG if failing else logging.ERROR, "policy evaluation failed",
                        exc_info=True)  # fmt: skip
                failing = True
            else:
                if failing:
                    log.warning("policy evaluation works again")
                failing = False
            await asyncio.sleep(TICK)

    # -- inputs ------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Run the hooks that match an event (never for hook outcomes themselves)."""
        if event.type.startswith("hook."):
            return
        for hook in self.policy.hooks:
            if not any(fnmatch.fnmatchcase(event.type, pattern) for pattern in hook.events):
                continue
            group = str(event.data.get("group", "")) if event.data else ""
            if hook.only and event.device not in hook.only and group not in hook.only:
                continue
            task = asyncio.create_task(self._run_hook(hook.run, hook.timeout, event, hook.env))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    async def _run_hook(
        self, argv: list[str], timeout: float, event: Event, env: list[str] | None = None
    ) -> None:
        if self.dry_run:
            self._emit(
                event.device, "hook.ok", Severity.INFO, f"dry run: would run {argv[0]}", argv=argv
            )
            return
        try:
            result = await run_hook(
                argv, timeout=timeout, event=event.payload(), pass_env=env or ()
            )
        except Exception as exc:
            # A hook task that died would otherwise vanish without a word.
            log.exception("running hook %s failed", argv[0])
            self._emit(
                event.device,
                "hook.failed",
                Severity.WARNING,
                f"hook {argv[0]} for {event.type}: could not run: {type(exc).__name__}: {exc}",
                argv=argv,
                returncode=None,
                for_event=event.id,
            )
            return
        ok = result.ok
        self._emit(
            event.device,
            "hook.ok" if ok else "hook.failed",
            Severity.INFO if ok else Severity.WARNING,
            f"hook {argv[0]} for {event.type}: {result.describe()}",
            argv=argv,
            returncode=result.returncode,
            for_event=event.id,
        )

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self) -> None:
        now = self.clock()
        states = self.state.all()
        for evaluator in self.groups.values():
            self._evaluate_group(evaluator, states, now)
        sd = self.policy.shutdown
        if sd is None or self._stopping:
            return
        group = self.groups[sd.group]
        if not group.ready:
            return
        confirm = sd.triggers.low_battery.confirm if sd.triggers.low_battery else []
        pv = power_view(group.group, states, confirm)
        gen = sd.triggers.generator_not_running
        unknown = unknown_inputs(
            group.group, states, confirm, (gen.device, gen.metric) if gen else None
        )
        # Only triggers the site configured can be blind.
        if sd.triggers.runtime_below is None and sd.triggers.runtime_margin is None:
            unknown["runtime"] = []
        if self.policy.recovery is None:
            unknown["recovery"] = []
        self._watch_blind(unknown, sd.triggers.stale_after, now)
        self._warn_unconfirmed(pv)
        if self.plan_task is not None:
            self._maybe_cancel(pv, now)
        elif self.recovery_task is None and not self.site_down:
            reason = self._trigger(pv, states, now, unknown)
            if reason is not None:
                self._start_plan(reason)
                return
        if self.recovery_pending and self.plan_task is None and self.recovery_task is None:
            self._maybe_recover(pv, now, bool(unknown["recovery"]))

    def _watch_blind(self, unknown: dict[str, list[str]], stale_after: float, now: float) -> None:
        """Raise `policy.trigger_blind` once a trigger's input stayed unknown `stale_after`,
        and `policy.trigger_sees` once it is known again."""
        for name, inputs in unknown.items():
            watch = self._blind.setdefault(name, Blind(stale_after))
            change = watch.update(bool(inputs), now)
            if change == "blind":
                self._emit(
                    self.site,
                    "policy.trigger_blind",
                    Severity.WARNING,
                    f"the {name} trigger is blind: {', '.join(inputs)} unknown for "
                    f"{stale_after:g} s (it neither fires nor clears until they read again)",
                    trigger=name,
                    inputs=inputs,
                )
            elif change == "sees":
                self._emit(
                    self.site,
                    "policy.trigger_sees",
                    Severity.INFO,
                    f"the {name} trigger sees again: its inputs read again",
                    trigger=name,
                )

    def _evaluate_group(
        self, ev: GroupEvaluator, states: Mapping[str, DeviceState], now: float
    ) -> None:
        before = self._group_status.get(ev.group.id)
        view = ev.update(states, now)
        # No healthy member at all is its own transition (redundancy.lost), also from "lost".
        none_left = view.status != "ok" and view.healthy == 0
        key = f"{view.status}/none" if none_left else view.status
        if not ev.ready or key == before:
            return
        self._group_status[ev.group.id] = key
        self._publish_group(ev, view)
        if before is None and view.status == "ok":
            return
        g = ev.group
        if view.status == "ok":
            self._emit(
                g.id,
                "redundancy.restored",
                Severity.INFO,
                f"{g.kind} redundancy of {g.id} restored ({view.healthy} of {len(g.members)})",
                group=g.id,
                status=view.status,
            )
        elif none_left:
            self._emit(
                g.id,
                "redundancy.lost",
                Severity.CRITICAL,
                f"{g.kind} redundancy of {g.id} lost: none of {len(g.members)} healthy "
                f"(needs {g.min}); down: {', '.join(view.down)}",
                group=g.id,
                status=view.status,
                down=view.down,
            )
        else:
            severity = Severity.CRITICAL if view.status == "lost" else Severity.WARNING
            what = "lost" if view.status == "lost" else "degraded"
            self._emit(
                g.id,
                "redundancy.degraded",
                severity,
                f"{g.kind} redundancy of {g.id} {what}: {view.healthy} of {len(g.members)} "
                f"healthy (needs {g.min}); down: {', '.join(view.down)}",
                group=g.id,
                status=view.status,
                down=view.down,
            )

    def _publish_group(self, ev: GroupEvaluator, view: GroupView) -> None:
        state = DeviceState(
            device=f"group-{ev.group.id}",
            driver="policy",
            ts=utcnow(),
            comm="ok",
            status=(view.status.upper(),),
            metrics=view.payload_metrics(ev.group),
        )
        self.state.put(state)
        self.publish_state(state)

    def _warn_unconfirmed(self, pv: PowerView) -> None:
        for ups in pv.unconfirmed_low:
            if ups not in self._unconfirmed_warned:
                self._unconfirmed_warned.add(ups)
                self._emit(
                    ups,
                    "power.low_battery_unconfirmed",
                    Severity.WARNING,
                    f"{ups} reports low battery but nothing confirms its input is gone "
                    "(not on battery, or another source still sees power): no shutdown for it",
                )
        self._unconfirmed_warned &= set(pv.unconfirmed_low)

    def expected_duration(self) -> float:
        """What the plan takes: built from each target's learned time (durations.py; real runs
        first, then drills), each stage as long as its slowest step. Until any target of the
        plan was measured: the median of completed runs, else `expected_duration` as
        configured. Cached until the next plan ends."""
        if self._expected is None:
            self._expected = self._learn_duration()
        return self._expected

    def learned_times(self) -> dict[str, float]:
        """Each target's learned time: from real runs, else from drills."""
        real = self.journal.target_times("shutdown")
        drills = self.journal.path.with_name(DRILL_JOURNAL)
        if drills == self.journal.path or not drills.exists():
            return real
        other = Journal(drills)
        try:
            return merged(real, other.target_times("shutdown"))
        finally:
            other.close()

    def _learn_duration(self) -> float:
        sd = self.policy.shutdown
        assert sd is not None
        plan = estimate_plan(sd.stages, self.learned_times())
        if plan.learned_any:
            return plan.seconds
        learned = self.journal.learned_duration("shutdown")
        drills = self.journal.path.with_name(DRILL_JOURNAL)
        if learned is None and drills != self.journal.path and drills.exists():
            other = Journal(drills)
            try:
                learned = other.learned_duration("shutdown")
            finally:
                other.close()
        return learned if learned is not None else sd.expected_duration

    def _trigger(
        self,
        pv: PowerView,
        states: Mapping[str, DeviceState],
        now: float,
        unknown: Mapping[str, list[str]],
    ) -> str | None:
        """The reason to start the plan now, or None. A trigger whose decision rests on an
        unknown input holds: its debounce is neither advanced nor reset."""
        sd = self.policy.shutdown
        assert sd is not None
        trig = sd.triggers
        need = self.groups[sd.group].group.min
        on_battery = pv.on_battery_group(need)
        runtime = pv.runtime if pv.runtime is not None else float("inf")
        self.last_runtime = pv.runtime
        cooling = self._last_plan_end is not None and now - self._last_plan_end < sd.cooldown
        reasons: list[str] = []
        held = self._held
        if held["fsd"].update(trig.fsd and bool(pv.fsd), now):
            reasons.append(f"forced shutdown (FSD) from {', '.join(pv.fsd)}")
        critical = pv.critical(need, trig.comm_lost_on_battery)
        lb_blind = (
            bool(unknown["low_battery"])
            and bool(set(pv.unconfirmed_low) & set(pv.on_battery))
            and not critical
        )
        if not lb_blind and held["low_battery"].update(
            trig.low_battery is not None and critical, now
        ):
            parts = [f"low battery on {', '.join(pv.low_battery)}"] if pv.low_battery else []
            if pv.dead and trig.comm_lost_on_battery:
                parts.append(f"{', '.join(pv.dead)} lost while on battery")
            reasons.append("; ".join(parts) or "too few UPS units can carry the load")
        limit = None
        if trig.runtime_below is not None:
            limit = trig.runtime_below
        if trig.runtime_margin is not None:
            limit = max(limit or 0.0, self.expected_duration() + trig.runtime_margin)
        runtime_blind = on_battery and bool(unknown["runtime"])
        if not runtime_blind and held["runtime"].update(
            on_battery and limit is not None and runtime < limit, now
        ):
            reasons.append(f"runtime {runtime:.0f} s is below {limit:.0f} s")
        if not cooling:
            if held["on_battery"].update(on_battery and trig.on_battery_for is not None, now):
                reasons.append(f"on battery for {trig.on_battery_for:g} s")
            gen = trig.generator_not_running
            gen_down = (
                gen is not None and str(metric(states, gen.device, gen.metric)) != gen.running
            )
            gen_blind = on_battery and bool(unknown["generator"])
            if not gen_blind and held["generator"].update(on_battery and gen_down, now):
                assert gen is not None
                reasons.append(
                    f"generator {gen.device} not running {gen.after:g} s after the power was lost"
                )
        else:
            held["on_battery"].update(False, now)
            held["generator"].update(False, now)
        return "; ".join(reasons) if reasons else None

    def _maybe_cancel(self, pv: PowerView, now: float) -> None:
        sd = self.policy.shutdown
        assert sd is not None and self.plan is not None
        back = not pv.on_battery_group(self.groups[sd.group].group.min) and not pv.fsd
        if self._cancel_held.update(back, now) and not self.plan.past_no_return:
            assert self.plan_task is not None
            if self.plan_task.cancelling() or self.plan_task.done():
                # Asked once already: a second cancel would interrupt the cancelled plan's
                # own clean-up (journaling the run `cancelled`, the event), not the plan.
                return
            log.warning("power is back before the point of no return: cancelling the shutdown")
            self.plan_task.cancel()

    def _maybe_recover(self, pv: PowerView, now: float, charge_unknown: bool = False) -> None:
        rec = self.policy.recovery
        sd = self.policy.shutdown
        assert sd is not None
        need = self.groups[sd.group].group.min
        charged = rec is None or pv.min_charge is None or pv.min_charge >= rec.min_charge
        if charge_unknown and rec is not None:
            return  # a charge the UPS cannot tell is not "charged enough": wait for a reading
        if self._recover_held.update(not pv.on_battery_group(need) and charged, now):
            self._start_recovery()

    # -- plans -------------------------------------------------------------------------------

    def _start_plan(self, reason: str, resume: RunRecord | None = None) -> None:
        sd = self.policy.shutdown
        assert sd is not None
        run_id = (
            resume.id if resume else self.journal.start_run("shutdown", reason, drill=self.drill)
        )
        self.plan_reason = reason
        ctx = StepContext(
            self.drivers,
            {"site": self.site, "type": "shutdown.started", "reason": reason},
            self.dry_run,
            self._alert,
        )
        self.plan = PlanRunner(self.journal, run_id, sd.stages, ctx, self._plan_step)
        self.recovery_pending = False
        for h in self._held.values():
            h.update(False, 0)
        self._cancel_held.update(False, 0)
        if not resume:
            expected = self.expected_duration()
            self._emit(
                sd.group,
                "shutdown.started",
                Severity.CRITICAL,
                f"shutdown of {self.site} started: {reason} (plan takes about {expected:.0f} s)",
                reason=reason,
                run=run_id,
                expected_duration=expected,
            )
        self.plan_task = asyncio.create_task(
            self._plan(run_id, resume is not None), name="shutdown-plan"
        )

    async def _plan(self, run_id: int, resume: bool) -> None:
        sd = self.policy.shutdown
        assert sd is not None and self.plan is not None
        started = self.clock()
        try:
            ok = await self.plan.run(resume=resume)
        except asyncio.CancelledError:
            if self._stopping:
                raise  # the journal keeps it running: the next start resumes it
            await self.journal.durable(self.journal.end_run(run_id, "cancelled"))
            self._emit(
                sd.group,
                "shutdown.cancelled",
                Severity.WARNING,
                f"shutdown of {self.site} cancelled: power is back before the point of no return; "
                "recovery brings back what was stopped",
                run=run_id,
            )
            self._plan_ended()
            return
        except Exception as exc:
            log.exception("the shutdown plan failed")
            await self.journal.durable(self.journal.end_run(run_id, "failed"))
            self._emit(
                sd.group,
                "shutdown.failed",
                Severity.CRITICAL,
                f"shutdown plan failed: {exc}",
                run=run_id,
            )
            self._plan_ended()
            return
        took = self.clock() - started
        await self.journal.durable(self.journal.end_run(run_id, "completed" if ok else "failed"))
        if ok:
            self._emit(
                sd.group,
                "shutdown.completed",
                Severity.CRITICAL,
                f"shutdown of {self.site} completed in {took:.0f} s",
                run=run_id,
                duration=took,
            )
            self._plan_ended(completed=True)
            return
        else:
            self._emit(
                sd.group,
                "shutdown.failed",
                Severity.CRITICAL,
                f"shutdown of {self.site} stopped on a failed step after {took:.0f} s",
                run=run_id,
            )
        self._plan_ended()

    def _alert(self, target: str, kind: str, message: str) -> None:
        """A critical event from inside a step, naming its target (a changed SSH host key)."""
        self._emit(target, kind, Severity.CRITICAL, message)

    @property
    def secondaries_fsd(self) -> bool:
        """True while the NUT face must show FSD: a running (or completed) plan has reached a
        `notify_nut_secondaries` stage. A plan cancelled before that stage never shows it."""
        plan = self.plan
        if plan is None or not plan.secondaries_notified:
            return False
        return self.plan_task is not None or self.site_down

    def _plan_ended(self, completed: bool = False) -> None:
        self.site_down = completed
        self.plan_task = None
        self._expected = None
        self._last_plan_end = self.clock()
        self.recovery_pending = self.policy.recovery is not None or self._has_undo()
        self._recover_held.update(False, 0)

    def _has_undo(self) -> bool:
        sd = self.policy.shutdown
        return sd is not None and any(
            st.undo or (st.vm or st.containers) is not None
            for stage in sd.stages
            for st in stage.steps
        )

    def _plan_step(self, outcome: StepOutcome) -> None:
        sd = self.policy.shutdown
        assert sd is not None
        self._step_event("shutdown.step", sd.group, outcome)

    def _step_event(self, kind: str, device: str, outcome: StepOutcome) -> None:
        """`shutdown.step` / `recovery.step`: one per step, with its outcome and duration."""
        self._emit(
            device,
            kind,
            Severity.INFO if outcome.ok else Severity.WARNING,
            f"{kind.split('.')[0]} step {outcome.label}: {outcome.detail}",
            stage=outcome.stage,
            step=outcome.step,
            ok=outcome.ok,
            duration=round(outcome.duration, 3),
        )

    # -- recovery ----------------------------------------------------------------------------

    def recovery_stages(self) -> list[StageConfig]:
        """Undo what the last shutdown stopped (reverse order), then the recovery stages."""
        sd = self.policy.shutdown
        stages: list[StageConfig] = []
        last = self.journal.last_run("shutdown")
        if sd is not None and last is not None:
            done = {
                (s.stage, s.step)
                for s in self.journal.steps(last.id)
                if s.state in ("done", "interrupted")
            }
            undo: list[StepConfig] = []
            for si in reversed(range(len(sd.stages))):
                for ti, step in enumerate(sd.stages[si].steps):
                    if step.kind in ("vm", "containers") and self._stopped_any(last.id, si, ti):
                        undo.append(start_copy(step, (last.id, si, ti)))
                    elif step.undo and (si, ti) in done:
                        undo.append(
                            step.model_copy(
                                update={"action": step.undo, "name": f"{step.device} {step.undo}"}
                            )
                        )
            for step in undo:
                what = step.device or step.label
                # Built, not validated: a start copy carries the action the site file may not.
                stages.append(
                    StageConfig.model_construct(name=f"undo {what}", steps=[step], no_return=False)
                )
        if self.policy.recovery is not None:
            stages.extend(self.policy.recovery.stages)
        return stages

    def _stopped_any(self, run_id: int, si: int, ti: int) -> bool:
        sd = self.policy.shutdown
        assert sd is not None
        step = sd.stages[si].steps[ti]
        cfg = step.vm or step.containers
        return (
            cfg is not None
            and cfg.start_on_recovery
            and bool(stopped_by(self.journal, (run_id, si, ti)))
        )

    def _start_recovery(self, resume: RunRecord | None = None) -> None:
        # Even with nothing to undo or run, recovery is the moment the site counts as back:
        # it is journaled and announced, and a new outage may start a new plan again.
        stages = self.recovery_stages()
        self.recovery_pending = False
        run_id = (
            resume.id
            if resume
            else self.journal.start_run("recovery", "power back and stable", drill=self.drill)
        )
        retries = self.policy.recovery.retries if self.policy.recovery else 3

        async def with_retries(step: StepConfig, ctx: StepContext) -> tuple[bool, str]:
            detail = ""
            for attempt in range(1, (retries if step.kind == "device" else 1) + 1):
                ok, detail = await execute_step(step, ctx)
                if ok:
                    return True, detail if attempt == 1 else f"{detail} (attempt {attempt})"
                await asyncio.sleep(min(2.0 * attempt, 10.0))
            return False, detail

        ctx = StepContext(
            self.drivers, {"site": self.site, "type": "recovery.started"}, self.dry_run
        )
        runner = PlanRunner(self.journal, run_id, stages, ctx, self._recovery_step, with_retries)
        if not resume:
            self._emit(
                self.site,
                "recovery.started",
                Severity.INFO,
                f"recovery of {self.site} started: power is back and stable",
                run=run_id,
            )
        self.recovery_task = asyncio.create_task(
            self._recover(runner, run_id, resume is not None), name="recovery"
        )

    async def _recover(self, runner: PlanRunner, run_id: int, resume: bool) -> None:
        started = self.clock()
        error: Exception | None = None
        try:
            ok = await runner.run(resume=resume)
        except asyncio.CancelledError:
            raise  # stopping: the journal keeps the run `running`, the next start resumes it
        except Exception as exc:
            # A bug or a broken driver must not leave the run open and the site silent.
            log.exception("the recovery plan failed")
            ok, error = False, exc
        finally:
            self.recovery_task = None
            self.site_down = False
        took = self.clock() - started
        await self.journal.durable(self.journal.end_run(run_id, "completed" if ok else "failed"))
        if error is not None:
            self._emit(
                self.site,
                "recovery.failed",
                Severity.CRITICAL,
                f"recovery of {self.site} failed: {type(error).__name__}: {error}",
                run=run_id,
                error=f"{type(error).__name__}: {error}",
            )
        elif ok:
            self._emit(
                self.site,
                "recovery.completed",
                Severity.INFO,
                f"recovery of {self.site} completed in {took:.0f} s",
                run=run_id,
                duration=took,
            )
        else:
            self._emit(
                self.site,
                "recovery.failed",
                Severity.CRITICAL,
                f"recovery of {self.site} failed: see the steps",
                run=run_id,
            )

    def _recovery_step(self, outcome: StepOutcome) -> None:
        self._step_event("recovery.step", self.site, outcome)

    # -- helpers -----------------------------------------------------------------------------

    def _emit(self, device: str, kind: str, severity: Severity, message: str, **data: Any) -> None:
        """Raise an event; the agent's `emit` isolates each sink, listener and hook from the
        others (faults.py), so nothing here may swallow a failure."""
        self.emit_event(Event(self.site, device, kind, severity, message, data=data))
