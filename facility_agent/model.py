"""The plugin API's vocabulary at the import path plugins were first written against (0.1): it
lives in `facility_agent.core.model`. New code imports from there."""

from facility_agent.core.model import (
    DeviceState,
    Event,
    EventType,
    Reading,
    Sample,
    Severity,
    iso_ts,
    new_event_id,
    utcnow,
)

__all__ = [
    "DeviceState",
    "Event",
    "EventType",
    "Reading",
    "Sample",
    "Severity",
    "iso_ts",
    "new_event_id",
    "utcnow",
]
