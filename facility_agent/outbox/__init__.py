"""The durable outbox: rows written to SQLite before any output is handed them (store.py), and
each output's ordered view of them (channel.py)."""

from facility_agent.outbox.channel import Channel
from facility_agent.outbox.rows import Row
from facility_agent.outbox.store import Outbox, OutboxError

__all__ = ["Channel", "Outbox", "OutboxError", "Row"]
