"""Small value types the site file uses: durations and identifiers."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_FACTOR = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Seconds from `1`, `0.5`, `"500ms"`, `"2s"`, `"1m"`, `"1h"`; anything else is left to fail."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '500ms', '2s', '1m'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(
                f"{value!r} is not a duration: use a number of seconds or '500ms', '2s', '1m', '1h'"
            )
        return float(match.group(1)) * _FACTOR[match.group(2)]
    raise ValueError("a duration is a number of seconds or a string like '500ms', '2s', '1m'")


#: Seconds, written as a number or with a unit; always positive.
Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]

#: Site and device ids end up in MQTT topics, so they are kept to a safe alphabet.
Identifier = Annotated[str, Field(pattern=r"^[a-z0-9_-]+$", min_length=1, max_length=64)]
