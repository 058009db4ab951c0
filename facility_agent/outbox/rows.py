"""What the outbox stores: one message for one output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Row:
    """One message for one output, as stored."""

    seq: int
    sink: str
    kind: str
    created: float
    key: str
    payload: bytes


#: How an output is handed the rows it is to deliver, in order.
RowsCallback = Callable[[list[Row]], None]
