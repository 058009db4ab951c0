"""Valid ranges and sentinels of profile metrics: when a device's value is not a reading.

Shared by the SNMP and Modbus profile loaders and drivers. The check runs on the RAW value (the
integer the MIB or register map defines, before `scale`), because that is where MIBs state their
ranges (`INTEGER (0..100)`) and where sentinels are documented (0xFFFF, -1, 2147483647); a scaled
value would need every range rewritten in published units, and floating-point scaling could let a
sentinel slip through. A value outside the range or equal to a sentinel is left out of the
metrics and named in `Sample.unknown` instead. See docs/profiles.md.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

log = logging.getLogger("facility_agent.unknown")

Number = int | float
_RANGE = re.compile(
    r"^\s*(-?[0-9][0-9_]*(?:\.[0-9]+)?|-?0x[0-9a-fA-F]+)\s*\.\.\s*"
    r"(-?[0-9][0-9_]*(?:\.[0-9]+)?|-?0x[0-9a-fA-F]+)\s*$"
)


def _number(text: str) -> Number:
    text = text.replace("_", "")
    if "0x" in text.lower():
        return int(text, 16)
    return float(text) if "." in text else int(text)


def parse_range(value: object) -> tuple[Number, Number]:
    """`"0..100"` (the MIB's own notation) or `[0, 100]` -> (0, 100); low must not exceed high."""
    if isinstance(value, str):
        match = _RANGE.match(value)
        if not match:
            raise ValueError(f"range {value!r}: write it as LOW..HIGH, e.g. 0..100")
        lo, hi = _number(match.group(1)), _number(match.group(2))
    elif isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = value
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)):
            raise ValueError(f"range {value!r}: two numbers")
    else:
        raise ValueError(f"range {value!r}: write it as LOW..HIGH, e.g. 0..100")
    if lo > hi:
        raise ValueError(f"range {value!r}: low end above high end")
    return lo, hi


def not_a_reading(
    raw: Number, valid: tuple[Number, Number] | None, sentinels: Iterable[Number]
) -> str | None:
    """Why `raw` is not a reading (for the log), or None when it is one."""
    if isinstance(raw, float) and not math.isfinite(raw):
        return f"{raw} is not a number"
    if raw in sentinels:
        return f"{raw} is a sentinel of this device (unknown / not fitted)"
    if valid is not None and not valid[0] <= raw <= valid[1]:
        return f"{raw} is outside the valid range {valid[0]}..{valid[1]}"
    return None


class UnknownLog:
    """Logs a metric turning unknown once per device and metric, not on every poll; a metric
    that reads again and later turns unknown again is logged again."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._logged: set[str] = set()

    def update(self, unknown: dict[str, str], known: Iterable[str]) -> None:
        """`unknown`: metric -> reason this poll; `known`: metrics that read this poll."""
        for name, reason in unknown.items():
            if name not in self._logged:
                self._logged.add(name)
                log.warning(
                    "device %s: %s: %s; published as unknown, not as a reading",
                    self.device,
                    name,
                    reason,
                    extra={"device": self.device},
                )
        for name in known:
            self._logged.discard(name)
