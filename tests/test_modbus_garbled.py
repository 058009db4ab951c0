"""A Modbus TCP server that answers with a frame pymodbus cannot decode (found by bench/fuzz.py):
a clear 'garbled reply' for that request, no asyncio traceback, and the connection kept."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from facility_agent.core.driver import ProtocolError
from facility_agent.drivers.modbus import bus


async def test_an_undecodable_tcp_frame_is_a_garbled_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while req := await reader.read(260):
            # Same transaction id, unit 1, function code 0xE9: an "exception" of no function.
            writer.write(req[:2] + struct.pack(">HHB", 0, 2, 1) + b"\xe9")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = bus.ModbusLink(bus.TcpParams("127.0.0.1", port), request_timeout=0.5, retries=0)
    caplog.set_level(logging.ERROR, logger="asyncio")
    try:
        for _ in range(2):
            with pytest.raises(ProtocolError, match="garbled reply"):
                await link.read(1, "holding", 0, 2)
    finally:
        await link.close()
        server.close()
        await server.wait_closed()
    assert connections == 1, "the connection was dropped over one bad frame"
    assert not [r for r in caplog.records if "data_received" in r.getMessage()]
