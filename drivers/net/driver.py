"""The site box's own network: link and bond-member state from the kernel, and whether each
upstream path answers (TCP connect, or ICMP echo where the box permits it).

This is the network-redundancy source for a box without a managed switch to ask over SNMP.
Each path is probed on its own deadline (name lookup included: probe.py), all at once, so one
black-holed gateway or hung resolver costs only its own timeout.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from facility_agent.core.driver import DeviceConfig, Driver, SimulatorFaces, own_config
from facility_agent.core.model import MetricValue, Sample, utcnow
from facility_agent.core.units import Duration
from facility_agent.drivers.net.probe import icmp_reachable, tcp_reachable

SYSFS_NET = "/sys/class/net"


class PathConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Used in metric names: `uplink.<name>.status`.
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]+$")
    host: str
    method: Literal["tcp", "icmp"] = "tcp"
    port: int = Field(default=443, ge=1, le=65535)
    timeout: Duration = 1.0
    #: A refused TCP connection proves the far host is there (`up`, the default: right for a
    #: gateway); `down` when the service itself must answer.
    refused_means: Literal["up", "down"] = "up"


class NetDeviceConfig(DeviceConfig):
    links: list[str] = Field(default_factory=list)
    bonds: list[str] = Field(default_factory=list)
    paths: list[PathConfig] = Field(default_factory=list)
    #: Where the kernel's interfaces are listed; changed only to read another root.
    sysfs: str = SYSFS_NET


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def link_up(root: Path, name: str) -> bool | None:
    """None when the interface does not exist."""
    base = root / name
    if not base.exists():
        return None
    state = _read(base / "operstate")
    if state == "up":
        return True
    if state in (None, "unknown", "dormant"):
        # Loopback and some tunnels report `unknown`: fall back on the carrier.
        return _read(base / "carrier") == "1"
    return False


class NetDriver(Driver):
    """`link.<if>.status`, `bond.<bond>.member.<if>.status`, `uplink.<path>.status` / `.rtt`."""

    name = "net"
    metrics_doc = "reachability and latency of the box's own uplinks and paths"
    config_model = NetDeviceConfig

    @classmethod
    def aim_at_simulator(cls, device: DeviceConfig, sim: SimulatorFaces) -> DeviceConfig | None:
        """The box's own links and paths: a drill reads them as they are."""
        return device

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        self.cfg = config = own_config(config, NetDeviceConfig)

    async def poll(self) -> Sample:
        root = Path(self.cfg.sysfs)
        metrics: dict[str, MetricValue] = {}
        for link in self.cfg.links:
            up = link_up(root, link)
            metrics[f"link.{link}.status"] = "missing" if up is None else ("up" if up else "down")
        for bond in self.cfg.bonds:
            metrics.update(self._bond(root, bond))
        results = await asyncio.gather(*(self._probe(p) for p in self.cfg.paths))
        for path, rtt in zip(self.cfg.paths, results, strict=True):
            metrics[f"uplink.{path.name}.status"] = "up" if rtt is not None else "down"
            if rtt is not None:
                metrics[f"uplink.{path.name}.rtt"] = round(rtt, 2)
        return Sample(self.cfg.id, utcnow(), (), metrics)

    def _bond(self, root: Path, bond: str) -> dict[str, MetricValue]:
        members = (_read(root / bond / "bonding" / "slaves") or "").split()
        out: dict[str, MetricValue] = {}
        up = 0
        for member in members:
            ok = bool(link_up(root, member))
            up += ok
            out[f"bond.{bond}.member.{member}.status"] = "up" if ok else "down"
        out[f"bond.{bond}.members"] = len(members)
        out[f"bond.{bond}.members_up"] = up
        exists = (root / bond).exists()
        out[f"bond.{bond}.status"] = "missing" if not exists else ("up" if up else "down")
        return out

    async def _probe(self, path: PathConfig) -> float | None:
        if path.method == "icmp":
            return await icmp_reachable(path.host, path.timeout)
        return await tcp_reachable(path.host, path.port, path.timeout, path.refused_means == "up")
