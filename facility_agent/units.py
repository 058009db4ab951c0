"""Durations and identifiers at the import path plugins were first written against (0.1): they
live in `facility_agent.core.units`. New code imports from there."""

from facility_agent.core.units import Duration, Identifier, parse_duration

__all__ = ["Duration", "Identifier", "parse_duration"]
