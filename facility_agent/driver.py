"""The plugin API at the import path plugins were first written against (0.1): the interface
itself lives in `facility_agent.core.driver`. New code imports from there."""

from facility_agent.core.driver import (
    ActionError,
    AlertFlags,
    AuthError,
    DeviceConfig,
    DeviceError,
    DeviceTimeout,
    Driver,
    NotFoundError,
    ProtocolError,
    SiteHooks,
    SiteService,
)

__all__ = [
    "ActionError",
    "AlertFlags",
    "AuthError",
    "DeviceConfig",
    "DeviceError",
    "DeviceTimeout",
    "Driver",
    "NotFoundError",
    "ProtocolError",
    "SiteHooks",
    "SiteService",
]
