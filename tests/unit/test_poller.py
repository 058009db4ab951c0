"""The poller's schedule: timeouts, comm lost after N misses, back-off, and isolation."""

from __future__ import annotations

import asyncio
import random
import time

from facility_agent.core.driver import AuthError, DeviceConfig, DeviceError, Driver
from facility_agent.core.model import Sample, utcnow
from facility_agent.runtime.poller import (
    DevicePoller,
    PollFailed,
    PollOk,
    PollOutcome,
    backoff_delay,
)


class ScriptedDriver(Driver):
    """Answers according to a list of behaviours: 'ok', 'hang', 'error', 'auth', 'boom'."""

    name = "scripted"

    def __init__(self, config: DeviceConfig, script: list[str]) -> None:
        super().__init__(config)
        self.script = script
        self.calls: list[float] = []

    async def poll(self) -> Sample:
        self.calls.append(time.monotonic())
        what = self.script[min(len(self.calls) - 1, len(self.script) - 1)]
        if what == "hang":
            await asyncio.sleep(3600)
        if what == "error":
            raise DeviceError("garbage from device")
        if what == "auth":
            raise AuthError("login refused")
        if what == "boom":
            raise ZeroDivisionError("driver bug")
        return Sample(self.config.id, utcnow(), ("OL",), {"battery.charge": 100})


def cfg(**kw: object) -> DeviceConfig:
    base: dict[str, object] = {"id": "d", "driver": "scripted", "interval": 0.05, "jitter": 0}
    return DeviceConfig.model_validate({**base, **kw})


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_delay(1.0, n, 10.0) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(1.0, 10_000, 60.0) == 60.0


async def test_timeout_becomes_failure_and_lost_after_n() -> None:
    driver = ScriptedDriver(cfg(timeout=0.05, lost_after=3), ["hang"])
    p = DevicePoller(driver, lambda o: None)
    outcomes = [await p.poll_once() for _ in range(3)]
    assert all(isinstance(o, PollFailed) for o in outcomes)
    assert [o.lost for o in outcomes] == [False, False, True]  # type: ignore[union-attr]
    assert "no answer within 0.05 s" in outcomes[0].error.reason  # type: ignore[union-attr]


async def test_permanent_error_is_lost_at_once_and_bugs_are_contained() -> None:
    p = DevicePoller(ScriptedDriver(cfg(), ["auth"]), lambda o: None)
    out = await p.poll_once()
    assert isinstance(out, PollFailed) and out.lost and out.failures == 1
    p2 = DevicePoller(ScriptedDriver(cfg(), ["boom"]), lambda o: None)
    out2 = await p2.poll_once()
    assert isinstance(out2, PollFailed)
    assert "ZeroDivisionError" in out2.error.reason


async def test_success_resets_failures() -> None:
    p = DevicePoller(ScriptedDriver(cfg(), ["error", "error", "ok", "error"]), lambda o: None)
    for _ in range(3):
        await p.poll_once()
    assert p.failures == 0
    out = await p.poll_once()
    assert isinstance(out, PollFailed) and out.failures == 1 and not out.lost


async def test_lost_device_backs_off_while_others_keep_schedule() -> None:
    outcomes: list[PollOutcome] = []
    dead = ScriptedDriver(cfg(id="dead", timeout=0.02, lost_after=2, backoff_max=0.4), ["hang"])
    live = ScriptedDriver(cfg(id="live"), ["ok"])
    tasks = [
        asyncio.create_task(DevicePoller(d, outcomes.append, rng=random.Random(1)).run())
        for d in (dead, live)
    ]
    await asyncio.sleep(1.5)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # The live device kept its 50 ms schedule (generous bound for a busy machine).
    assert len(live.calls) >= 15
    gaps = [b - a for a, b in zip(live.calls, live.calls[1:], strict=False)]
    assert max(gaps) < 0.5
    # The dead one was retried ever more slowly: far fewer calls, growing gaps.
    assert 3 <= len(dead.calls) <= 10
    dead_gaps = [b - a for a, b in zip(dead.calls, dead.calls[1:], strict=False)]
    assert dead_gaps[-1] > dead_gaps[0] * 2
    assert any(isinstance(o, PollOk) and o.device == "live" for o in outcomes)
    assert any(isinstance(o, PollFailed) and o.lost and o.device == "dead" for o in outcomes)


async def test_poll_now_wakes_the_schedule() -> None:
    driver = ScriptedDriver(cfg(interval=30), ["ok"])
    p = DevicePoller(driver, lambda o: None)
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.1)
    assert len(driver.calls) == 1
    p.poll_now()
    await asyncio.sleep(0.1)
    assert len(driver.calls) == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_alert_interval_polls_faster() -> None:
    driver = ScriptedDriver(cfg(interval=0.5, alert_interval=0.05), ["ok"])
    p = DevicePoller(driver, lambda o: None)
    p.set_alert(True)
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.6)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(driver.calls) >= 6


class SwallowsOneCancel(Driver):
    """What Python 3.11's wait_for does to a cancel that lands as its reply arrives (pymodbus
    awaits every reply that way): the poll returns its answer and the cancel is gone."""

    name = "swallow"
    swallowed = 0

    async def poll(self) -> Sample:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if SwallowsOneCancel.swallowed:
                raise
            SwallowsOneCancel.swallowed += 1
        return Sample(self.config.id, utcnow(), (), {"x": 1})


async def test_a_cancel_a_driver_swallowed_still_stops_the_poller() -> None:
    SwallowsOneCancel.swallowed = 0
    cfg = DeviceConfig(id="s", driver="swallow", interval=0.05, jitter=0)
    outcomes: list[object] = []
    poller = DevicePoller(SwallowsOneCancel(cfg), outcomes.append)
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.sleep(0.1)  # inside the driver's poll
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=3)
        assert task in done and task.cancelled(), "the poller polled on after its cancel"
        assert SwallowsOneCancel.swallowed == 1 and len(outcomes) <= 1
    finally:
        task.cancel()  # a second cancel is not swallowed: the test never leaves it running
        await asyncio.gather(task, return_exceptions=True)


async def test_cancel_all_cancels_again_a_task_that_swallowed_the_first() -> None:
    from facility_agent.runtime.supervise import cancel_all

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    await cancel_all([task], grace=0.2)
    assert task.cancelled() and swallowed == 2 and time.monotonic() - started < 5
