"""What a sink is: something that delivers states and events, and nothing else."""

from __future__ import annotations

from typing import Protocol

from ..model import DeviceState, Event


class Sink(Protocol):
    async def start(self) -> None: ...

    def publish_state(self, state: DeviceState) -> None: ...

    def publish_event(self, event: Event) -> None: ...

    async def stop(self, timeout: float = 5.0) -> None: ...
