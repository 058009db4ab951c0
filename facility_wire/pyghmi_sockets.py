"""pyghmi's socket I/O without its blocking-mode race: the cause of the IPMI sessions that
waited for ever (issue 15, and the late polls). Used by the IPMI driver's clients and by the
simulator's BMCs, which share the bug as they share pyghmi: so it lives here, a leaf both import.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any


def patch_socket_modes() -> None:
    """Make pyghmi's shared UDP socket safe to use from several threads. Idempotent.

    pyghmi's senders call `setblocking(1)` on a socket that its I/O thread shares, and the I/O
    thread calls `setblocking(0)` then `recvfrom()`. When a sender flips the mode in between,
    the I/O thread sits in a blocking `recvfrom()` on a drained socket: no reply is read and
    no waiter is woken (their waits had no timeout) until some packet happens to arrive on that
    socket. With many BMCs (or simulated BMCs in the same process) that is seconds or forever.
    Here receiving never blocks whatever the mode (MSG_DONTWAIT) and sending leaves the mode
    alone."""
    from pyghmi.ipmi.private import session as ps

    if getattr(ps._io_recvfrom, "_facility_agent", False):
        return

    def io_recvfrom(sock: Any, size: int) -> Any:
        try:
            return sock.recvfrom(size, socket.MSG_DONTWAIT)
        except OSError:
            return None

    def io_sendto(sock: Any, packet: Any, sockaddr: Any) -> None:
        with contextlib.suppress(Exception):
            sock.sendto(packet, sockaddr)

    io_recvfrom._facility_agent = True  # type: ignore[attr-defined]
    ps._io_recvfrom = io_recvfrom
    ps._io_sendto = io_sendto
