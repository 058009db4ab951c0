"""The site box's own network: link and bond-member state from the kernel, and whether each
upstream path answers (TCP connect, or ICMP echo where the box permits it).

This is the network-redundancy source for a box without a managed switch to ask over SNMP.
Each path is probed on its own deadline, all at once, so one black-holed gateway costs only
its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from facility_agent.driver import DeviceConfig, DeviceError, Driver
from facility_agent.model import MetricValue, Sample, utcnow
from facility_agent.units import Duration

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


async def tcp_reachable(
    host: str, port: int, timeout: float, refused_is_up: bool = True
) -> float | None:
    """Round-trip time of a TCP connect in ms, or None."""
    started = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        return (time.monotonic() - started) * 1000 if refused_is_up else None
    except (OSError, TimeoutError):
        return None
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return (time.monotonic() - started) * 1000


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class IcmpNotPermitted(DeviceError):
    permanent = True


def _icmp_socket() -> tuple[socket.socket, bool]:
    """A raw ICMP socket (root, CAP_NET_RAW) or an unprivileged datagram one where
    net.ipv4.ping_group_range allows it; (socket, is_raw)."""
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), True
    except PermissionError:
        pass
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP), False
    except PermissionError:
        raise IcmpNotPermitted(
            "ICMP is not permitted here: run as root, grant CAP_NET_RAW, widen "
            "net.ipv4.ping_group_range, or use method: tcp"
        ) from None


async def icmp_reachable(host: str, timeout: float) -> float | None:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, family=socket.AF_INET)
    address = infos[0][4][0]
    sock, raw = _icmp_socket()
    sock.setblocking(False)
    ident = os.getpid() & 0xFFFF
    seq = int(time.monotonic() * 1000) & 0xFFFF
    payload = b"facility-agent"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
    started = time.monotonic()
    try:
        await loop.sock_sendto(sock, packet, (address, 0))
        deadline = started + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                data, src = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), left)
            except TimeoutError:
                return None
            if raw:
                data = data[(data[0] & 0x0F) * 4 :]  # past the IP header
            if len(data) < 8 or src[0] != address:
                continue
            kind, _, _, r_ident, r_seq = struct.unpack("!BBHHH", data[:8])
            # A datagram ICMP socket rewrites the id to its port: match on seq only there.
            if kind == 0 and r_seq == seq and (r_ident == ident or not raw):
                return (time.monotonic() - started) * 1000
        return None
    finally:
        sock.close()


class NetDriver(Driver):
    """`link.<if>.status`, `bond.<bond>.member.<if>.status`, `uplink.<path>.status` / `.rtt`."""

    name = "net"
    config_model = NetDeviceConfig

    def __init__(self, config: DeviceConfig) -> None:
        super().__init__(config)
        if not isinstance(config, NetDeviceConfig):
            config = NetDeviceConfig.model_validate(config.model_dump())
        self.cfg = config

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
