"""The plan journal: every run and every step, written before and after, in SQLite (WAL).

A step is marked `started` before it runs and `done`/`failed` after, each in its own committed
transaction, so an agent killed at any instant knows on restart exactly which steps are behind
it, which one was in the middle, and which are still to come.

Every write is durable (synchronous=FULL: an fsync per commit), and an fsync can take hundreds of
milliseconds on a busy or failing disk: so writes run on the journal's own writer thread, one at
a time and in the order they were made, never on the event loop. A write returns a future; the
plan runner awaits the `started` mark (`await journal.durable(...)`) before the step runs, so the
rule above holds, while polling and publishing go on meanwhile. Run ids are handed out at once
(this process is the journal's only writer). Reads use a second connection on the caller's
thread: WAL readers never wait for a writer's fsync; a read made while writes are still queued
first waits for them, so a reader always sees what was written before. Without a running event
loop (tools, tests) each write waits for itself, as a plain call would.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facility_agent.policy.durations import LAST, TIMINGS_SQL, medians

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,               -- shutdown | recovery
    state TEXT NOT NULL,              -- running | completed | cancelled | failed
    reason TEXT NOT NULL,
    drill INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL,
    ended REAL,
    stage INTEGER NOT NULL DEFAULT 0  -- the stage reached; no_return is decided from it
);
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    stage INTEGER NOT NULL,
    step INTEGER NOT NULL,
    label TEXT NOT NULL,
    state TEXT NOT NULL,              -- started | done | failed | interrupted
    started REAL NOT NULL,
    ended REAL,
    detail TEXT,
    PRIMARY KEY (run_id, stage, step)
);
-- The targets of a vm:/containers: step, one row each, written before it is asked to stop
-- (`stopping`) and after (`stopped`, `failed`): a resumed step skips those behind it, and
-- recovery starts again only the ones this plan stopped.
CREATE TABLE IF NOT EXISTS targets (
    run_id INTEGER NOT NULL,
    stage INTEGER NOT NULL,
    step INTEGER NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    seq INTEGER NOT NULL,
    duration REAL,
    PRIMARY KEY (run_id, stage, step, target)
);
-- What each target of a step took when it succeeded, keyed by what it is (an ssh host and its
-- command, a guest at a URI, a container, a run: command: policy/durations.py), not by where it
-- sits in the plan: the plan's expected duration is built from these.
CREATE TABLE IF NOT EXISTS timings (
    run_id INTEGER NOT NULL,
    stage INTEGER NOT NULL,
    step INTEGER NOT NULL,
    target TEXT NOT NULL,
    duration REAL NOT NULL,
    PRIMARY KEY (run_id, stage, step, target)
);
"""


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    kind: str
    state: str
    reason: str
    drill: bool
    started: float
    ended: float | None
    stage: int

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


@dataclass(frozen=True, slots=True)
class StepRecord:
    stage: int
    step: int
    label: str
    state: str
    started: float
    ended: float | None
    detail: str | None

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


class Journal:
    """The plan journal of one site (one SQLite file): runs, steps and what each step
    stopped, written by one writer thread in order; see the module docstring for the rules
    a crash-safe resume relies on."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="journal-writer")
        self._wdb: sqlite3.Connection | None = None
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._writer.submit(self._open_writer).result()  # once, at start: schema and WAL
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        (self._last_run,) = self._db.execute(
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM runs), 0),"
            " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'runs'), 0))"
        ).fetchone()

    def _open_writer(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a step journaled as done must still be done after a power cut of the box.
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        self._wdb = db

    def close(self) -> None:
        """Waits for the writes still queued (at shutdown), then closes both connections."""
        self._db.close()  # the reader first: the writer's close checkpoints, on its own thread
        self._writer.submit(self._close_writer).result()
        self._writer.shutdown(wait=True)

    def _close_writer(self) -> None:
        if self._wdb is not None:
            self._wdb.close()
            self._wdb = None

    # -- writes (on the writer thread, in order) -------------------------------------------

    @staticmethod
    async def durable(write: Future[None]) -> None:
        """Wait until `write` is committed (and fsynced). A cancelled waiter does not cancel
        the write: once asked for, it is made."""
        await asyncio.shield(asyncio.wrap_future(write))

    def _write(self, sql: str, args: tuple[Any, ...]) -> Future[None]:
        with self._lock:
            self._pending += 1
            self._idle.clear()
        fut = self._writer.submit(self._execute, sql, args)
        fut.add_done_callback(self._written)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            fut.result()  # no event loop to keep free: behave as a plain call
        return fut

    def _execute(self, sql: str, args: tuple[Any, ...]) -> None:
        assert self._wdb is not None, "the journal is closed"
        self._wdb.execute(sql, args)

    def _written(self, fut: Future[None]) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()
        if not fut.cancelled() and fut.exception() is not None:
            log.error("writing the plan journal %s failed: %s", self.path, fut.exception())

    def _caught_up(self) -> None:
        """Before a read: what was written before it is visible (rarely waits: see above)."""
        if not self._idle.is_set():
            self._idle.wait()

    def start_run(self, kind: str, reason: str, *, drill: bool = False) -> int:
        self._last_run += 1
        run_id = int(self._last_run)
        self._write(
            "INSERT INTO runs (id, kind, state, reason, drill, started)"
            " VALUES (?, ?, 'running', ?, ?, ?)",
            (run_id, kind, reason, int(drill), time.time()),
        )
        return run_id

    def end_run(self, run_id: int, state: str) -> Future[None]:
        return self._write(
            "UPDATE runs SET state = ?, ended = ? WHERE id = ?", (state, time.time(), run_id)
        )

    def reach_stage(self, run_id: int, stage: int) -> Future[None]:
        return self._write("UPDATE runs SET stage = MAX(stage, ?) WHERE id = ?", (stage, run_id))

    def step_started(self, run_id: int, stage: int, step: int, label: str) -> Future[None]:
        return self._write(
            "INSERT OR REPLACE INTO steps (run_id, stage, step, label, state, started)"
            " VALUES (?, ?, ?, ?, 'started', ?)",
            (run_id, stage, step, label, time.time()),
        )

    def step_ended(
        self, run_id: int, stage: int, step: int, state: str, detail: str
    ) -> Future[None]:
        return self._write(
            "UPDATE steps SET state = ?, ended = ?, detail = ? WHERE run_id = ? AND stage = ?"
            " AND step = ?",
            (state, time.time(), detail[:2000], run_id, stage, step),
        )

    def target_mark(
        self,
        position: tuple[int, int, int],
        target: str,
        state: str,
        duration: float | None = None,
    ) -> None:
        """Journal one target of a step; its first mark fixes its place in the stop order.

        Through the writer thread, after the writes queued before it (the step's `started`),
        and waited for: a target is journaled `stopping` before it is asked to stop."""
        run_id, stage, step = position
        self._write(
            "INSERT INTO targets (run_id, stage, step, target, state, at, seq, duration)"
            " VALUES (?, ?, ?, ?, ?, ?, (SELECT COUNT(*) FROM targets WHERE run_id = ?"
            " AND stage = ? AND step = ?), ?)"
            " ON CONFLICT (run_id, stage, step, target) DO UPDATE SET state = excluded.state,"
            " at = excluded.at, duration = excluded.duration",
            (run_id, stage, step, target, state, time.time(), run_id, stage, step, duration),
        ).result()

    def target_time(
        self, position: tuple[int, int, int], target: str, duration: float
    ) -> Future[None]:
        """Journal what one target took (queued in order, not waited for: nothing depends on
        it but the next estimate, and a read waits for the queued writes)."""
        run_id, stage, step = position
        return self._write(
            "INSERT OR REPLACE INTO timings (run_id, stage, step, target, duration)"
            " VALUES (?, ?, ?, ?, ?)",
            (run_id, stage, step, target, float(duration)),
        )

    def targets(self, position: tuple[int, int, int]) -> list[tuple[str, str]]:
        """(target, state) of a step, in the order they were first marked."""
        self._caught_up()
        rows = self._db.execute(
            "SELECT target, state FROM targets WHERE run_id = ? AND stage = ? AND step = ?"
            " ORDER BY seq",
            position,
        ).fetchall()
        return [(str(t), str(s)) for t, s in rows]

    # -- reads (on the caller's thread, own connection) ------------------------------------

    def unfinished(self, kind: str) -> RunRecord | None:
        self._caught_up()
        row = self._db.execute(
            "SELECT id, kind, state, reason, drill, started, ended, stage FROM runs"
            " WHERE kind = ? AND state = 'running' ORDER BY id DESC LIMIT 1",
            (kind,),
        ).fetchone()
        return _run(row) if row else None

    def last_run(self, kind: str | None = None) -> RunRecord | None:
        self._caught_up()
        sql = "SELECT id, kind, state, reason, drill, started, ended, stage FROM runs"
        args: tuple[str, ...] = ()
        if kind:
            sql += " WHERE kind = ?"
            args = (kind,)
        row = self._db.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return _run(row) if row else None

    def runs(self, kind: str | None = None, limit: int = 20) -> list[RunRecord]:
        self._caught_up()
        sql = "SELECT id, kind, state, reason, drill, started, ended, stage FROM runs"
        args: tuple[str | int, ...] = ()
        if kind:
            sql += " WHERE kind = ?"
            args = (kind,)
        rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [_run(r) for r in rows]

    def steps(self, run_id: int) -> list[StepRecord]:
        self._caught_up()
        rows = self._db.execute(
            "SELECT stage, step, label, state, started, ended, detail FROM steps"
            " WHERE run_id = ? ORDER BY started, stage, step",
            (run_id,),
        ).fetchall()
        return [StepRecord(*r) for r in rows]

    def learned_duration(self, kind: str = "shutdown", last: int = 5) -> float | None:
        """The median duration of the last completed runs (drills included): what the plan
        really takes here, rather than what someone guessed when writing the site file.
        Completed runs only, whose end the engine awaits: no need to wait for queued writes
        (this is read as a plan starts, right after its `start_run`)."""
        rows = self._db.execute(
            "SELECT ended - started FROM runs WHERE kind = ? AND state = 'completed'"
            " AND ended IS NOT NULL ORDER BY id DESC LIMIT ?",
            (kind, last),
        ).fetchall()
        values = [float(r[0]) for r in rows if r[0] is not None]
        return statistics.median(values) if values else None

    def target_times(self, kind: str = "shutdown", last: int = LAST) -> dict[str, float]:
        """Per target (policy/durations.py keys), the median of its last measured times."""
        self._caught_up()
        return medians(self._db.execute(TIMINGS_SQL, (kind,)).fetchall(), last)


@dataclass(frozen=True, slots=True)
class PlanHistory:
    """One run of a plan with its steps in plan order, as a reader beside the agent sees it."""

    run: RunRecord
    steps: tuple[StepRecord, ...]


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection | None]:
    """The journal opened read-only (the runbook may read one the agent is writing, as another
    user); None when there is none or it cannot be opened."""
    if not path.exists():
        yield None
        return
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        yield None
        return
    try:
        yield db
    finally:
        db.close()


def read_history(path: Path, limit: int = 10) -> list[PlanHistory]:
    """The last runs of a plan journal, newest first; [] when there is none or it is unreadable."""
    with _read_only(path) as db:
        if db is None:
            return []
        try:
            rows = db.execute(
                "SELECT id, kind, state, reason, drill, started, ended, stage FROM runs"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            step_sql = (
                "SELECT stage, step, label, state, started, ended, detail FROM steps"
                " WHERE run_id = ? ORDER BY stage, step"
            )
            return [
                PlanHistory(
                    _run(r), tuple(StepRecord(*s) for s in db.execute(step_sql, (int(r[0]),)))
                )
                for r in rows
            ]
        except sqlite3.Error:
            return []


def read_timings(path: Path, kind: str = "shutdown") -> dict[str, float]:
    """Each target's learned time in a plan journal (read-only); {} for an older journal."""
    with _read_only(path) as db:
        if db is None:
            return {}
        try:
            return medians(db.execute(TIMINGS_SQL, (kind,)).fetchall())
        except sqlite3.Error:
            return {}  # a journal written before targets were timed has no `timings`


def _run(row: tuple[object, ...]) -> RunRecord:
    rid, kind, state, reason, drill, started, ended, stage = row
    return RunRecord(
        int(rid),  # type: ignore[call-overload]
        str(kind),
        str(state),
        str(reason),
        bool(drill),
        float(started),  # type: ignore[arg-type]
        None if ended is None else float(ended),  # type: ignore[arg-type]
        int(stage),  # type: ignore[call-overload]
    )
