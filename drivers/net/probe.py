"""Whether an upstream path answers: a TCP connect, or one ICMP echo through icmplib.

Name resolution is part of the probe and counts against its timeout: a resolver that hangs
makes the path `down` after `timeout`, not after the resolver gives up (often 5 s per server
and try). Each echo carries an identifier of its own (icmplib's per-process counter) and a
sequence number from a counter that starts at a random point, so concurrent probes, even to the
same host, never take each other's replies, and another process on the box is unlikely to
share the pair. Raw sockets (root, CAP_NET_RAW) are preferred; unprivileged datagram sockets
are used where net.ipv4.ping_group_range allows them, and there the kernel matches replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time

import icmplib
from icmplib.utils import unique_identifier

from facility_agent.core.driver import DeviceError

_SEQUENCE = itertools.count(random.randrange(0x10000))
#: None until the first echo: then whether raw sockets work here.
_privileged: bool | None = None


class IcmpNotPermitted(DeviceError):
    permanent = True


async def tcp_reachable(
    host: str, port: int, timeout: float, refused_is_up: bool = True
) -> float | None:
    """Round-trip time of a TCP connect in ms (name lookup included), or None."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return (time.monotonic() - started) * 1000 if refused_is_up else None
    except (OSError, TimeoutError):
        return None
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return (time.monotonic() - started) * 1000


def _socket() -> icmplib.AsyncSocket:
    """A raw ICMP socket if permitted, else a datagram one; remembered for the next probes."""
    global _privileged
    for privileged in (True, False) if _privileged is None else (_privileged,):
        try:
            sock = icmplib.AsyncSocket(icmplib.ICMPv4Socket(privileged=privileged))
        except icmplib.SocketPermissionError:
            continue
        _privileged = privileged
        return sock
    raise IcmpNotPermitted(
        "ICMP is not permitted here: run as root, grant CAP_NET_RAW, widen "
        "net.ipv4.ping_group_range, or use method: tcp"
    )


async def icmp_reachable(host: str, timeout: float) -> float | None:
    """Round-trip time of one ICMP echo in ms, or None (no answer, an ICMP error, or a name
    that does not resolve within `timeout`)."""
    try:
        async with asyncio.timeout(timeout):
            address = host
            if icmplib.is_hostname(host):
                address = (await icmplib.async_resolve(host, 4))[0]
            request = icmplib.ICMPRequest(
                address, unique_identifier(), next(_SEQUENCE) & 0xFFFF, payload_size=16
            )
            with _socket() as sock:
                sock.send(request)
                # icmplib's own timeout, a little later than ours: ours is the one that counts.
                reply = await sock.receive(request, timeout + 1)
            reply.raise_for_status()
    except (TimeoutError, icmplib.ICMPLibError):
        return None
    return float((reply.time - request.time) * 1000)
