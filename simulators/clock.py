"""Simulated time.

The model never reads the wall clock itself: it is stepped by whoever owns a clock. A `SimClock`
runs `speed` times faster than real time so a test can drain an hour of battery in seconds; a
`ManualClock` only moves when told to, so unit tests are exact and need no sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything that can tell simulated seconds since the simulation started."""

    def now(self) -> float: ...


class SimClock:
    """Simulated seconds = real (monotonic) seconds since creation x `speed`.

    The speed can be changed while running; simulated time stays continuous across the change.
    """

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"clock speed must be > 0, not {speed}")
        self._speed = speed
        self._real_base = time.monotonic()
        self._sim_base = 0.0

    @property
    def speed(self) -> float:
        return self._speed

    @speed.setter
    def speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError(f"clock speed must be > 0, not {speed}")
        # Rebase so that now() does not jump when the rate changes.
        self._sim_base = self.now()
        self._real_base = time.monotonic()
        self._speed = speed

    def now(self) -> float:
        return self._sim_base + (time.monotonic() - self._real_base) * self._speed

    def real_seconds(self, sim_seconds: float) -> float:
        """How long `sim_seconds` of simulated time take in real time at the current speed."""
        return sim_seconds / self._speed


class ManualClock:
    """A clock for unit tests: time only moves with `advance()` or `set()`."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def advance(self, dt: float) -> float:
        if dt < 0:
            raise ValueError("time does not run backwards")
        self._t += dt
        return self._t

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError("time does not run backwards")
        self._t = t
