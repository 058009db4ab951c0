"""What a sink is: something that delivers states and events, and nothing else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING

from facility_agent.core.model import DeviceState, Event

if TYPE_CHECKING:
    from facility_agent.runtime.faults import Faults
    from facility_agent.runtime.supervise import Supervisor


class Sink(ABC):
    """An output. The four abstract methods are the whole duty; the others are optional seams
    with defaults, so that the agent never asks a sink what it can do with `getattr`.

    `publish_state` and `publish_event` are called on the loop and must not block: a sink
    queues (or writes to the outbox) and delivers in its own task."""

    #: How the output is named in logs and /metrics (empty: its class name).
    name: str = ""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    def publish_state(self, state: DeviceState) -> None: ...

    @abstractmethod
    def publish_event(self, event: Event) -> None: ...

    @abstractmethod
    async def stop(self, timeout: float = 5.0) -> None: ...

    def publish_retained(self, suffix: str, payload: bytes) -> None:  # noqa: B027 - optional
        """A retained message at `prefix/site/suffix` (an empty payload removes it); only
        outputs that keep retained messages (MQTT) do anything with it."""

    def stats(self) -> Mapping[str, int]:
        """Counters /metrics shows for this output (`facility_agent_output_*`)."""
        return {}

    @property
    def connected(self) -> bool | None:
        """Whether the output's server is reachable now; None for outputs without one."""
        return None

    def attach(self, supervisor: Supervisor, faults: Faults) -> None:  # noqa: B027 - optional
        """The agent's supervisor and fault counts, for sinks that run tasks or show faults;
        a sink used on its own keeps the ones it was built with."""
