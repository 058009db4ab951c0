"""One output's view of the outbox: rows handed over in order, live or from the backlog, and
acknowledged one by one. The store (store.py) owns the file; a channel only decides when its
output gets rows and how many it may hold (`window`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facility_agent.outbox.rows import Row, RowsCallback

if TYPE_CHECKING:
    from facility_agent.outbox import Outbox

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Channel:
    """One output's view of the outbox: rows arrive in order through `on_rows`; `ack` removes."""

    outbox: Outbox
    sink: str
    on_rows: RowsCallback
    window: int
    #: Highest seq handed to the output.
    cursor: int = 0
    #: True while every committed row of this output has been handed over.
    live: bool = False
    loading: bool = False
    #: Rows handed over and not yet acknowledged.
    held: int = 0

    def ack(self, seq: int) -> None:
        """The output delivered this row: delete it (in the next transaction)."""
        self.held = max(0, self.held - 1)
        self.outbox._ack(self.sink, seq)
        self._maybe_load()

    def release(self, count: int = 1) -> None:
        """The output let go of rows without delivering them (stopping): they stay stored."""
        self.held = max(0, self.held - count)

    def set_aside(self, row: Row, reason: str) -> None:
        """The output can never deliver this row (a 4xx): keep it apart for a person to read."""
        self.held = max(0, self.held - 1)
        self.outbox._set_aside(row, reason)
        self._maybe_load()

    @property
    def pending(self) -> int:
        """Rows of this output not yet acknowledged (stored, being written, or held)."""
        return self.outbox._counts[self.sink]

    def _offer(self, rows: list[Row]) -> None:
        """Rows just committed: take them if live and there is room, else stay behind."""
        fresh = [r for r in rows if r.seq > self.cursor]
        if not fresh:
            return
        if not self.live or self.held + len(fresh) > self.window:
            self.live = False
            self._maybe_load()
            return
        self._hand(fresh)

    def _hand(self, rows: list[Row]) -> None:
        self.cursor = rows[-1].seq
        self.held += len(rows)
        try:
            self.on_rows(rows)
        except Exception:
            log.exception(
                "output %s failed to take %d row(s) from the outbox", self.sink, len(rows)
            )

    def _maybe_load(self) -> None:
        if self.live or self.loading or not self.outbox.is_open:
            return
        if self.held > self.window // 2:
            return
        self.loading = True
        self.outbox._load(self, self.window - self.held)

    def _loaded(self, rows: list[Row], limit: int) -> None:
        self.loading = False
        fresh = [r for r in rows if r.seq > self.cursor]
        if len(rows) < limit:
            self.live = True
        if fresh:
            self._hand(fresh)
        if not self.live:
            self._maybe_load()
