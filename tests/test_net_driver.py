"""The `net` driver against the real kernel: a veth pair the test creates and toggles, loopback
TCP services, and ICMP echo to 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from facility_agent.core.model import Sample
from facility_agent.drivers.net import NetDeviceConfig, NetDriver
from tests.fixtures.procs import free_port, require_binary


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    """A veth pair (real kernel links); needs root and iproute2, as CI has."""
    ip = require_binary("ip")
    a, b = f"fa{os.getpid() % 10000}a", f"fa{os.getpid() % 10000}b"
    subprocess.run([ip, "link", "del", a], capture_output=True)
    made = subprocess.run(
        [ip, "link", "add", a, "type", "veth", "peer", "name", b], capture_output=True
    )
    if made.returncode != 0:
        pytest.fail(f"cannot create a veth pair (root needed): {made.stderr.decode()}")
    yield a, b
    subprocess.run([ip, "link", "del", a], capture_output=True)


def ip_link(name: str, state: str) -> None:
    subprocess.run(["ip", "link", "set", name, state], check=True)


@pytest.fixture
async def listener() -> AsyncIterator[int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


def driver(**kw: object) -> NetDriver:
    return NetDriver(NetDeviceConfig.model_validate({"id": "box", "driver": "net", **kw}))


async def poll_until(d: NetDriver, key: str, value: str, timeout: float = 5.0) -> Sample:
    for _ in range(int(timeout / 0.1)):
        sample = await d.poll()
        if sample.metrics.get(key) == value:
            return sample
        await asyncio.sleep(0.1)
    raise AssertionError(f"{key} never became {value}: {sample.metrics}")


async def test_link_state_follows_the_kernel(veth: tuple[str, str]) -> None:
    a, b = veth
    d = driver(links=[a, "lo", "no-such-if"])
    sample = await d.poll()
    assert sample.metrics[f"link.{a}.status"] == "down"
    assert sample.metrics["link.lo.status"] == "up"
    assert sample.metrics["link.no-such-if.status"] == "missing"
    ip_link(a, "up")
    ip_link(b, "up")
    await poll_until(d, f"link.{a}.status", "up")
    ip_link(b, "down")  # the far end goes away: our end loses its carrier
    await poll_until(d, f"link.{a}.status", "down")


async def test_paths_by_tcp_and_icmp(listener: int) -> None:
    closed = free_port()
    d = driver(
        paths=[
            {"name": "wan-1", "host": "127.0.0.1", "port": listener},
            {"name": "wan-2", "host": "127.0.0.1", "port": closed, "refused_means": "down"},
            {"name": "gw", "host": "127.0.0.1", "port": closed},
            {"name": "ping", "host": "127.0.0.1", "method": "icmp"},
        ]
    )
    m = (await d.poll()).metrics
    assert m["uplink.wan-1.status"] == "up" and isinstance(m["uplink.wan-1.rtt"], float)
    assert m["uplink.wan-2.status"] == "down" and "uplink.wan-2.rtt" not in m
    assert m["uplink.gw.status"] == "up"  # refused: the host is there
    assert m["uplink.ping.status"] == "up"


def test_bond_members_from_the_bonding_tree(tmp_path: Path) -> None:
    """This kernel has no bonding module, so the sysfs layout of a bond is laid out here
    (`bonding/slaves` and each member's operstate), read through the same code path."""
    for name, state in (("bond0", "up"), ("eth1", "up"), ("eth2", "down")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "operstate").write_text(state + "\n")
    (tmp_path / "bond0" / "bonding").mkdir()
    (tmp_path / "bond0" / "bonding" / "slaves").write_text("eth1 eth2\n")
    d = driver(bonds=["bond0", "bond9"], sysfs=str(tmp_path))
    m = asyncio.run(d.poll()).metrics
    assert m["bond.bond0.member.eth1.status"] == "up"
    assert m["bond.bond0.member.eth2.status"] == "down"
    assert m["bond.bond0.members"] == 2 and m["bond.bond0.members_up"] == 1
    assert m["bond.bond0.status"] == "up" and m["bond.bond9.status"] == "missing"


@pytest.fixture
def far_host(veth: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """A test host of our own: the far end of the veth pair in a network namespace, at
    10.254.N.2 (the near end is 10.254.N.1). Yields (its address, its namespace)."""
    a, b = veth
    ns = f"fa-ns-{os.getpid() % 10000}"
    net = f"10.254.{os.getpid() % 250}"
    run = lambda *args: subprocess.run(["ip", *args], check=True, capture_output=True)  # noqa: E731
    run("netns", "add", ns)
    try:
        run("link", "set", b, "netns", ns)
        run("addr", "add", f"{net}.1/30", "dev", a)
        run("link", "set", a, "up")
        run("netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", b)
        run("netns", "exec", ns, "ip", "link", "set", b, "up")
        yield f"{net}.2", ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def test_uplink_lost_is_seen_and_costs_only_its_timeout(
    far_host: tuple[str, str], listener: int, veth: tuple[str, str]
) -> None:
    host, ns = far_host
    d = driver(
        paths=[
            {"name": "local", "host": "127.0.0.1", "port": listener, "timeout": 0.5},
            {"name": "far", "host": host, "port": 9, "timeout": 0.5},
        ]
    )
    await poll_until(d, "uplink.far.status", "up")  # its kernel answers (RST): the path works
    down = ["ip", "netns", "exec", ns, "ip", "link", "set", veth[1], "down"]
    await asyncio.to_thread(subprocess.run, down, check=True)
    started = asyncio.get_running_loop().time()
    sample = await poll_until(d, "uplink.far.status", "down")
    assert sample.metrics["uplink.local.status"] == "up"
    # Probed together: a black-holed path costs its own 0.5 s timeout, not the others'.
    assert asyncio.get_running_loop().time() - started < 3.0


async def test_many_concurrent_echoes_take_only_their_own_replies(
    far_host: tuple[str, str],
) -> None:
    """Forty echoes at once, half to loopback (answers) and half to a host whose kernel ignores
    echo requests. Raw ICMP sockets all see every reply: only each echo's own identifier and
    sequence keep a loopback reply from making a silent host look `up`."""
    host, ns = far_host
    quiet = ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"]
    await asyncio.to_thread(subprocess.run, quiet, check=True)
    # The silent host's sockets first, so that they are open when the loopback replies come.
    paths = [
        {"name": f"far-{i}", "host": host, "method": "icmp", "timeout": 1.0} for i in range(20)
    ]
    paths += [{"name": f"lo-{i}", "host": "127.0.0.1", "method": "icmp"} for i in range(20)]
    d = driver(paths=paths)
    for _ in range(3):
        m = (await d.poll()).metrics
        assert all(m[f"uplink.lo-{i}.status"] == "up" for i in range(20)), m
        assert all(m[f"uplink.far-{i}.status"] == "down" for i in range(20)), m


SLOW_POLL = """
import asyncio, json, os, sys, time
from facility_agent.drivers.net import NetDeviceConfig, NetDriver
paths = [
    {"name": "ping", "host": "slow.facility-agent.test", "method": "icmp", "timeout": 1.0},
    {"name": "web", "host": "slow.facility-agent.test", "port": 443, "timeout": 1.0},
    {"name": "lo", "host": "127.0.0.1", "method": "icmp", "timeout": 1.0},
]
d = NetDriver(NetDeviceConfig.model_validate({"id": "box", "driver": "net", "paths": paths}))
async def main() -> None:
    began = time.monotonic()
    metrics = (await d.poll()).metrics
    print(json.dumps({"took": time.monotonic() - began, "metrics": metrics}), flush=True)
    os._exit(0)  # the resolver thread is still waiting on the silent server: do not join it
asyncio.run(main())
"""


def test_a_name_that_resolves_slowly_costs_only_the_timeout(tmp_path: Path) -> None:
    """The resolver points at a DNS server that never answers (8 s per try), in a mount
    namespace of the probing process only; both probes of that name are `down` after their
    1 s timeout, and the loopback echo of the same poll is unaffected."""
    unshare = require_binary("unshare")
    dns = f"127.53.{os.getpid() % 250}.{os.getpid() % 199 + 1}"
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((dns, 53))
    try:
        conf = tmp_path / "resolv.conf"
        conf.write_text(f"nameserver {dns}\noptions timeout:8 attempts:1\n")
        script = tmp_path / "poll.py"
        script.write_text(SLOW_POLL)
        shell = f"mount --bind {conf} /etc/resolv.conf && exec {sys.executable} {script}"
        began = time.monotonic()
        done = subprocess.run(
            [unshare, "--mount", "sh", "-c", shell], capture_output=True, timeout=60
        )
        wall = time.monotonic() - began
    finally:
        silent.close()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    got = json.loads(done.stdout)
    m = got["metrics"]
    assert m["uplink.ping.status"] == "down" and m["uplink.web.status"] == "down"
    assert m["uplink.lo.status"] == "up"
    print(f"poll with a hung resolver: {got['took']:.2f} s (process {wall:.2f} s)")
    assert got["took"] < 4.0  # the resolver alone would take 8 s or more
