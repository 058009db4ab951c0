"""Failures of the parts an event passes through (a sink, a listener, the policy engine), kept
apart so that one broken output never keeps the others from seeing the event.

Each failure is counted per part and kind (`/metrics`: `facility_agent_output_publish_errors`)
and logged once per part and kind, with its traceback: a sink that raises on every event must
not flood the log, nor stay silent.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)


def part_name(part: object) -> str:
    """How a sink (or listener) is named in logs and metrics."""
    name = getattr(part, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(part, "__qualname__", type(part).__name__)


class Faults:
    """Counts (on the loop) what failed where; `/metrics` reads copies of `counts`."""

    def __init__(self) -> None:
        #: (part, kind) -> failures, kind being `publish_event:TypeError` and the like.
        self.counts: Counter[tuple[str, str]] = Counter()

    def failed(self, part: str, what: str, exc: BaseException) -> None:
        kind = f"{what}:{type(exc).__name__}"
        first = (part, kind) not in self.counts
        self.counts[(part, kind)] += 1
        if first:
            log.error(
                "%s failed in %s (%s: %s); the event still went everywhere else, and further "
                "failures of this kind are only counted (/metrics)",
                part,
                what,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )

    def by_part(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (part, _), n in self.counts.items():
            out[part] += n
        return dict(out)
