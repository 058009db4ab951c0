"""Finds driver plugins through the `facility_agent.drivers` entry-point group."""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import entry_points

from facility_agent.core.driver import Driver

ENTRY_POINT_GROUP = "facility_agent.drivers"
log = logging.getLogger(__name__)


class PluginLoadError(Exception):
    pass


@cache
def driver_classes() -> dict[str, type[Driver]]:
    """Every installed driver by its site-file name. A plugin that fails to import is logged
    and left out, so one broken third-party package cannot stop the agent."""
    found: dict[str, type[Driver]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:
            log.error("driver plugin %r (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Driver)):
            log.error("driver plugin %r (%s) is not a Driver subclass", ep.name, ep.value)
            continue
        found[ep.name] = cls
    return found


def driver_class(name: str) -> type[Driver]:
    classes = driver_classes()
    if name not in classes:
        known = ", ".join(sorted(classes)) or "none installed"
        raise PluginLoadError(f"unknown driver {name!r} (known: {known})")
    return classes[name]
