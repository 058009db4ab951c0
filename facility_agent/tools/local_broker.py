"""A private Mosquitto for the demo: its own config, a free loopback port, stopped by PID."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")


class BrokerError(RuntimeError):
    pass


def find_mosquitto() -> str:
    for candidate in MOSQUITTO_PATHS:
        found = shutil.which(candidate)
        if found:
            return found
    raise BrokerError(
        "mosquitto is not installed: run scripts/bootstrap (or apt-get install mosquitto)"
    )


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalMosquitto:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_tcp_port(host)
        self._dir = tempfile.TemporaryDirectory(prefix="facility-agent-broker-")
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def log_path(self) -> Path:
        return Path(self._dir.name) / "mosquitto.log"

    async def start(self, timeout: float = 10.0) -> None:
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(
            "per_listener_settings false\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
        )
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                find_mosquitto(),
                "-c",
                str(conf),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise BrokerError(f"mosquitto exited: {self.log_path.read_text()[-500:]}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.02)
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port}")

    async def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._dir.cleanup()
