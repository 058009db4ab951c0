"""The durable outbox: every state, event, reading and alert bound for a pushed output is written
to SQLite before it is sent, and removed only when that output confirms it.

Why a file and not memory: the site is in trouble exactly when the network is, and Telegraf and
collectd are known to drop what they hold in memory while the broker or database is away. An
outbox also survives a restart: a new agent delivers what the previous one left.

Design (read this before changing it):

* One SQLite file in WAL mode, one table; a row belongs to one output (`sink`) and carries what
  that output needs (`key`: the MQTT topic, ...; `payload`: the bytes, built once, with their
  original timestamp inside). Several outputs fan out to several rows.
* SQLite stays off the event loop: one writer thread owns the connection. `put()` only appends to
  a list; once per loop tick everything put (and every acknowledgement) goes to the thread as one
  transaction. While one transaction runs, new puts gather for the next, so batches grow with load.
* An output is only handed a row after its transaction committed ("written before delivery").
  Each output has a `Channel`: live, it receives new rows as they commit; behind (at start, or
  when it holds `window` rows already) it streams the backlog from the file in windows of
  `window` rows, so an hour of a 200-device site never has to fit in memory.
* Durability: WAL with synchronous=NORMAL survives a crash of the agent (kill -9) completely; a
  power cut of the box itself may lose the last transactions (FULL would fsync every one).
* Bounds, applied every few seconds and after a failed write: rows older than `max_age` are
  dropped whatever their kind; past `max_bytes` the oldest states and readings go first (they are
  superseded by newer ones), events and alerts only when nothing else is left. Everything dropped
  is counted per output and reason (`stats()`, `/metrics`) and logged once per episode.
* A full disk (SQLITE_FULL) or an I/O error: a clear log line, the size policy applied at once,
  the rows kept in memory (bounded, oldest dropped and counted) and retried; the agent stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facility_agent.outbox.channel import Channel
from facility_agent.outbox.rows import Row, RowsCallback

log = logging.getLogger(__name__)

#: Kinds the size policy drops first: a newer state or reading supersedes them.
SUPERSEDED_KINDS = ("state", "reading")
#: Rows waiting in memory for a disk that refused them, at most.
MEMORY_LIMIT = 50_000
#: Rows per transaction while the disk is refusing writes, so that what fits gets in.
TROUBLE_CHUNK = 16
#: Seconds between retries of a refused write.
RETRY_AFTER = 0.5
#: How often the size and age bounds are checked.
MAINTENANCE_EVERY = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_sink_seq ON outbox (sink, seq);
CREATE TABLE IF NOT EXISTS set_aside (
    seq INTEGER PRIMARY KEY,
    sink TEXT NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""


class OutboxError(Exception):
    """The outbox file cannot be opened or created (path, permissions)."""


_NewRow = tuple[str, str, float, str, bytes]


@dataclass(slots=True)
class _Result:
    written: list[Row]
    dropped: Counter[tuple[str, str]]
    size: int
    error: sqlite3.Error | None


def _row_values(row: Row) -> tuple[int, str, str, float, str, bytes]:
    return (row.seq, row.sink, row.kind, row.created, row.key, row.payload)


class Outbox:
    """Store-and-forward shared by the outputs; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 256 * 1000**2,
        max_age: float = 7 * 86400.0,
        window: int = 1000,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.window = window
        self._channels: dict[str, Channel] = {}
        self._pending: list[_NewRow] = []
        self._acks: list[int] = []
        self._aside: list[tuple[Row, str]] = []
        self._counts: Counter[str] = Counter()
        self.dropped: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[str] = Counter()
        self.written = 0
        self.deleted = 0
        self.transactions = 0
        self._users = 0
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._flushing = False
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._disk_trouble = False
        self._last_maintenance = 0.0
        self._bytes = 0

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def open(self) -> None:
        """Open (or create) the file; shared by every output, so counted: the last close closes."""
        self._users += 1
        if self._db is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        try:
            counts = await self._loop.run_in_executor(self._executor, self._open_db)
        except (OSError, sqlite3.Error) as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            self._users -= 1
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from None
        self._counts.update(counts)
        total = sum(counts.values())
        if total:
            log.info(
                "outbox %s holds %d message(s) from before: delivering them first",
                self.path,
                total,
            )
        for channel in self._channels.values():
            channel._maybe_load()
        self._schedule_flush()

    async def close(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users or self._db is None:
            return
        await self.flush()
        assert self._loop is not None and self._executor is not None
        await self._loop.run_in_executor(self._executor, self._close_db)
        self._executor.shutdown(wait=True)
        self._executor = None

    def channel(self, sink: str, on_rows: RowsCallback, window: int | None = None) -> Channel:
        """Register an output; it gets its stored rows first (after `open`), then live ones."""
        channel = Channel(self, sink, on_rows, window or self.window)
        self._channels[sink] = channel
        self._counts.setdefault(sink, 0)
        if self.is_open:
            channel._maybe_load()
        return channel

    # -- the hot path (event loop) -------------------------------------------------------------

    def put(self, sink: str, kind: str, key: str, payload: bytes, created: float | None) -> None:
        """Store one message for `sink`; written with everything else put in this loop tick."""
        self._pending.append(
            (sink, kind, created if created is not None else time.time(), key, payload)
        )
        self._counts[sink] += 1
        self._trim_memory()
        self._schedule_flush()

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything put and acknowledged so far is in the file."""
        deadline = time.monotonic() + timeout
        while self._pending or self._acks or self._aside or self._flushing:
            if not self.is_open:
                return False
            self._schedule_flush()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._flushed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.5)):
                    await self._flushed.wait()
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "rows": dict(self._counts),
            "dropped": {f"{sink}:{reason}": n for (sink, reason), n in self.dropped.items()},
            "errors": dict(self.errors),
            "written": self.written,
            "deleted": self.deleted,
            "transactions": self.transactions,
            "bytes": self._bytes,
        }

    def _ack(self, sink: str, seq: int) -> None:
        self._acks.append(seq)
        self._counts[sink] = max(0, self._counts[sink] - 1)
        self._schedule_flush()

    def _set_aside(self, row: Row, reason: str) -> None:
        self._aside.append((row, reason))
        self._counts[row.sink] = max(0, self._counts[row.sink] - 1)
        self.dropped[(row.sink, "set_aside")] += 1
        self._schedule_flush()

    def _trim_memory(self) -> None:
        """Only while the disk refuses writes: then memory is the only place left, bounded."""
        excess = len(self._pending) - MEMORY_LIMIT
        if excess <= 0 or not self._disk_trouble:
            return
        for sink, *_ in self._pending[:excess]:
            self.dropped[(sink, "disk_full")] += 1
            self._counts[sink] = max(0, self._counts[sink] - 1)
        del self._pending[:excess]

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or self._loop is None:
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        if self._flushing or self._db is None or self._executor is None or self._loop is None:
            return
        now = time.monotonic()
        maintain = now - self._last_maintenance >= MAINTENANCE_EVERY or self._disk_trouble
        if not (self._pending or self._acks or self._aside or maintain):
            self._flushed.set()
            return
        if maintain:
            self._last_maintenance = now
        rows, self._pending = self._pending, []
        acks, self._acks = self._acks, []
        aside, self._aside = self._aside, []
        self._flushing = True
        chunk = TROUBLE_CHUNK if self._disk_trouble else max(1, len(rows))
        fut = self._loop.run_in_executor(
            self._executor, self._transaction, rows, acks, aside, maintain, chunk
        )
        fut.add_done_callback(lambda f: self._flush_done(f, rows, acks, aside))

    def _flush_done(
        self,
        fut: asyncio.Future[_Result],
        rows: list[_NewRow],
        acks: list[int],
        aside: list[tuple[Row, str]],
    ) -> None:
        self._flushing = False
        exc = fut.exception()
        failure: BaseException | None = exc
        if exc is not None:
            # Not even the acknowledgements could be written: keep everything for the retry.
            self._write_failed(exc, rows, acks, aside)
        else:
            result = fut.result()
            self._bytes = result.size
            self.transactions += 1
            self.written += len(result.written)
            self.deleted += len(acks)
            self._count_drops(result.dropped)
            if result.error is not None:
                failure = result.error
                self._write_failed(result.error, rows[len(result.written) :], [], [])
            elif self._disk_trouble:
                self._disk_trouble = False
                log.warning("outbox %s is writable again", self.path)
            by_sink: dict[str, list[Row]] = {}
            for row in result.written:
                by_sink.setdefault(row.sink, []).append(row)
            for sink, sink_rows in by_sink.items():
                channel = self._channels.get(sink)
                if channel is not None:
                    channel._offer(sink_rows)
        if self._pending or self._acks or self._aside:
            if failure is not None and self._loop is not None:
                self._loop.call_later(RETRY_AFTER, self._schedule_flush)
            else:
                self._schedule_flush()
        else:
            self._flushed.set()

    def _count_drops(self, dropped: Counter[tuple[str, str]]) -> None:
        for (sink, reason), n in dropped.items():
            self._counts[sink] = max(0, self._counts[sink] - n)
            if n and not self.dropped[(sink, reason)]:
                log.warning(
                    "outbox over its %s bound: dropped %d %s message(s), oldest first",
                    "age" if reason == "age" else "size",
                    n,
                    sink,
                )
            self.dropped[(sink, reason)] += n

    def _write_failed(
        self,
        exc: BaseException,
        rows: list[_NewRow],
        acks: list[int],
        aside: list[tuple[Row, str]],
    ) -> None:
        kind = "disk_full" if "full" in str(exc).lower() else "write"
        self.errors[kind] += 1
        if not self._disk_trouble:
            self._disk_trouble = True
            what = "the disk (or its quota) is full" if kind == "disk_full" else str(exc)
            log.error(
                "cannot write the outbox %s: %s; keeping up to %d message(s) in memory and "
                "dropping the oldest stored states and readings to make room",
                self.path,
                what,
                MEMORY_LIMIT,
            )
        self._pending[:0] = rows
        self._acks[:0] = acks
        self._aside[:0] = aside
        self._trim_memory()

    def _load(self, channel: Channel, limit: int) -> None:
        assert self._loop is not None and self._executor is not None
        fut = self._loop.run_in_executor(
            self._executor, self._select, channel.sink, channel.cursor, limit
        )

        def done(f: asyncio.Future[list[Row]]) -> None:
            if f.exception() is not None:
                channel.loading = False
                self.errors["read"] += 1
                log.error("reading the outbox %s failed: %s", self.path, f.exception())
                if self._loop is not None:
                    self._loop.call_later(1.0, channel._maybe_load)
                return
            channel._loaded(f.result(), limit)

        fut.add_done_callback(done)

    # -- the writer thread ---------------------------------------------------------------------

    def _open_db(self) -> Counter[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            counts: Counter[str] = Counter()
            for sink, n in db.execute("SELECT sink, count(*) FROM outbox GROUP BY sink"):
                counts[sink] = n
        except sqlite3.Error:
            db.close()
            raise
        self._db = db
        return counts

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.close()

    def _transaction(
        self,
        rows: list[_NewRow],
        acks: list[int],
        aside: list[tuple[Row, str]],
        maintain: bool,
        chunk: int,
    ) -> _Result:
        """Deletions first, then the new rows in chunks; a full disk stops at the failed chunk
        (what was written stays written), makes room, and reports the error."""
        db = self._db
        assert db is not None
        written: list[Row] = []
        dropped: Counter[tuple[str, str]] = Counter()
        try:
            db.execute("BEGIN IMMEDIATE")
            if acks:
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in acks])
            for row, reason in aside:
                db.execute(
                    "INSERT OR REPLACE INTO set_aside VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (*_row_values(row), reason, time.time()),
                )
                db.execute("DELETE FROM outbox WHERE seq = ?", (row.seq,))
            if aside:
                db.execute(
                    "DELETE FROM set_aside WHERE seq NOT IN "
                    "(SELECT seq FROM set_aside ORDER BY seq DESC LIMIT 1000)"
                )
            if maintain:
                dropped += self._apply_bounds(db)
            db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback_and_make_room(db)
            raise
        error: sqlite3.Error | None = None
        for start in range(0, len(rows), chunk):
            part: list[Row] = []
            try:
                db.execute("BEGIN IMMEDIATE")
                for sink, kind, created, key, payload in rows[start : start + chunk]:
                    cur = db.execute(
                        "INSERT INTO outbox (sink, kind, created, key, payload) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (sink, kind, created, key, payload),
                    )
                    assert cur.lastrowid is not None
                    part.append(Row(cur.lastrowid, sink, kind, created, key, payload))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                dropped += self._rollback_and_make_room(db)
                error = exc
                break
            written.extend(part)
        return _Result(written, dropped, self._used_bytes(db), error)

    def _rollback_and_make_room(self, db: sqlite3.Connection) -> Counter[tuple[str, str]]:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        try:
            db.execute("BEGIN IMMEDIATE")
            freed = self._apply_bounds(db, force=True)
            db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            return Counter()
        return freed

    @staticmethod
    def _used_bytes(db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _apply_bounds(
        self, db: sqlite3.Connection, force: bool = False
    ) -> Counter[tuple[str, str]]:
        dropped: Counter[tuple[str, str]] = Counter()
        cutoff = time.time() - self.max_age
        for sink, n in db.execute(
            "SELECT sink, count(*) FROM outbox WHERE created < ? GROUP BY sink", (cutoff,)
        ).fetchall():
            dropped[(sink, "age")] += n
        if dropped:
            db.execute("DELETE FROM outbox WHERE created < ?", (cutoff,))
        used = self._used_bytes(db)
        if not force and used <= self.max_bytes:
            return dropped
        # Over the size bound: free a tenth of the rows (a quarter when the disk refused a
        # write), or down to 90 % of the bound, superseded kinds first.
        total = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        if not total:
            return dropped
        want = max(1, total // 4 if force else total // 10)
        if used > self.max_bytes:
            want = max(want, int(total * (1 - 0.9 * self.max_bytes / used)))
        marks = ",".join("?" * len(SUPERSEDED_KINDS))
        for where, args in (
            (f"kind IN ({marks})", SUPERSEDED_KINDS),
            (f"kind NOT IN ({marks})", SUPERSEDED_KINDS),
        ):
            if want <= 0:
                break
            victims = db.execute(
                f"SELECT seq, sink FROM outbox WHERE {where} ORDER BY seq LIMIT ?",
                (*args, want),
            ).fetchall()
            if not victims:
                continue
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s, _ in victims])
            for _, sink in victims:
                dropped[(sink, "size")] += 1
            want -= len(victims)
        return dropped

    def _select(self, sink: str, after: int, limit: int) -> list[Row]:
        db = self._db
        if db is None:
            return []
        cur = db.execute(
            "SELECT seq, sink, kind, created, key, payload FROM outbox "
            "WHERE sink = ? AND seq > ? ORDER BY seq LIMIT ?",
            (sink, after, limit),
        )
        return [Row(*r) for r in cur.fetchall()]

    def set_aside_rows(self, sink: str | None = None) -> list[tuple[Row, str]]:
        """What outputs could never deliver (for diagnostics and tests); read directly."""
        db = sqlite3.connect(self.path)
        try:
            query = "SELECT seq, sink, kind, created, key, payload, reason FROM set_aside"
            args: tuple[str, ...] = ()
            if sink is not None:
                query += " WHERE sink = ?"
                args = (sink,)
            return [(Row(*r[:6]), r[6]) for r in db.execute(query + " ORDER BY seq", args)]
        finally:
            db.close()
