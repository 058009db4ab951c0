"""One polling schedule per device.

Each device runs in its own task with its own deadline, so a device that hangs, times out or
answers garbage only ever costs itself: every other device keeps its schedule. A device that
keeps failing is reported lost after `lost_after` misses (NUT's DEADTIME) and then retried with
exponential back-off, so a dead box is not hammered; the back-off stops at `backoff_max` (5 s by
default, upsmon's POLLFREQ), because it is also how late a box that comes back is seen: doubled
up to a minute, a PDU stayed "lost" 33 s after it answered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from facility_agent.core.driver import DeviceError, DeviceTimeout, Driver
from facility_agent.core.model import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PollOk:
    device: str
    sample: Sample
    duration: float


@dataclass(frozen=True, slots=True)
class PollFailed:
    device: str
    error: DeviceError
    #: Consecutive failures including this one.
    failures: int
    #: True once the device counts as lost (enough misses, or a permanent error).
    lost: bool


PollOutcome = PollOk | PollFailed


def backoff_delay(interval: float, misses_past_lost: int, cap: float) -> float:
    """Delay before the next retry of a lost device: interval x 2^n, capped."""
    return float(min(cap, interval * (2 ** min(max(misses_past_lost, 0), 30))))


class DevicePoller:
    """Polls one device on its own schedule, in its own task, under its own deadline.

    Hands every outcome to `on_outcome` (the agent): a sample, or a failure with the count of
    misses so far and whether the device is now lost. Switches to `alert_interval` while the
    agent says the site is in trouble, and polls at once on `poll_now` (a trap arrived)."""

    def __init__(
        self,
        driver: Driver,
        report: Callable[[PollOutcome], None],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.driver = driver
        self.config = driver.config
        self.report = report
        self.failures = 0
        self.polls = 0
        self.alert = False
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()

    @property
    def device(self) -> str:
        return self.config.id

    def poll_now(self) -> None:
        """Poll at once instead of waiting out the interval (a trap arrived, an operator asked)."""
        self._wake.set()

    def set_alert(self, alert: bool) -> None:
        """Poll at `alert_interval` while the device or its site is degraded."""
        if alert != self.alert:
            self.alert = alert
            if alert:
                self._wake.set()

    @property
    def interval(self) -> float:
        cfg = self.config
        if self.alert and cfg.alert_interval is not None:
            return min(cfg.alert_interval, cfg.interval)
        return cfg.interval

    async def poll_once(self) -> PollOutcome:
        timeout = self.config.poll_timeout
        started = time.monotonic()
        self.polls += 1
        try:
            # A little grace past the driver's own deadline, so that a driver which times out
            # by itself can say more (which server, which request) than this generic backstop.
            async with asyncio.timeout(timeout * 1.1 + 0.1):
                sample = await self.driver.poll()
        except TimeoutError:
            return self._failed(DeviceTimeout(f"no answer within {timeout:g} s"))
        except DeviceError as exc:
            return self._failed(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A driver bug must not take the agent down; it is a failed poll with a reason.
            log.debug("driver %s raised", self.device, exc_info=True)
            return self._failed(DeviceError(f"driver error: {type(exc).__name__}: {exc}"))
        self.failures = 0
        return PollOk(self.device, sample, time.monotonic() - started)

    def _failed(self, error: DeviceError) -> PollFailed:
        self.failures += 1
        lost = self.failures >= self.config.lost_after or error.permanent
        return PollFailed(self.device, error, self.failures, lost)

    def next_delay(self, outcome: PollOutcome, elapsed: float) -> float:
        if isinstance(outcome, PollFailed) and outcome.lost:
            past = self.failures - self.config.lost_after
            delay = backoff_delay(self.interval, past, self.config.backoff_max)
            # Spread retries so that many devices lost together do not retry together.
            return max(self.interval, delay * self._rng.uniform(0.9, 1.1))
        return max(0.0, self.interval - elapsed)

    async def run(self) -> None:
        first = self._rng.uniform(0.0, self.config.jitter * self.config.interval)
        await self._sleep(first)
        while True:
            started = time.monotonic()
            outcome = await self.poll_once()
            _honour_cancel()
            try:
                self.report(outcome)
            except Exception:
                log.exception("handling the poll result of %s failed", self.device)
            await self._sleep(self.next_delay(outcome, time.monotonic() - started))

    async def _sleep(self, delay: float) -> None:
        if delay <= 0:
            self._wake.clear()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        self._wake.clear()


def _honour_cancel() -> None:
    """Raise the cancellation a driver's library swallowed. On Python 3.11 `asyncio.wait_for`
    loses a cancel that arrives as its inner future completes (gh-86296); pymodbus awaits each
    reply that way, so a poller cancelled at that instant got its reply instead and polled on
    for ever, and `agent.stop()` with it (a drill that never ended, 1 run in ~20). The cancel
    is still counted on the task (`cancelling()`): honour it here, at our own boundary."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
