"""The site box's own network: link and bond state from sysfs (driver), path probes (probe)."""

from facility_agent.drivers.net.driver import NetDeviceConfig, NetDriver, PathConfig

__all__ = ["NetDeviceConfig", "NetDriver", "PathConfig"]
