"""The plan journal: every run and every step, written before and after, in SQLite (WAL).

A step is marked `started` before it runs and `done`/`failed` after, each in its own committed
transaction, so an agent killed at any instant knows on restart exactly which steps are behind
it, which one was in the middle, and which are still to come.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

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
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a step journaled as done must still be done after a power cut of the box.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def start_run(self, kind: str, reason: str, *, drill: bool = False) -> int:
        cur = self._db.execute(
            "INSERT INTO runs (kind, state, reason, drill, started) VALUES (?, 'running', ?, ?, ?)",
            (kind, reason, int(drill), time.time()),
        )
        return int(cur.lastrowid or 0)

    def end_run(self, run_id: int, state: str) -> None:
        self._db.execute(
            "UPDATE runs SET state = ?, ended = ? WHERE id = ?", (state, time.time(), run_id)
        )

    def reach_stage(self, run_id: int, stage: int) -> None:
        self._db.execute("UPDATE runs SET stage = MAX(stage, ?) WHERE id = ?", (stage, run_id))

    def step_started(self, run_id: int, stage: int, step: int, label: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO steps (run_id, stage, step, label, state, started)"
            " VALUES (?, ?, ?, ?, 'started', ?)",
            (run_id, stage, step, label, time.time()),
        )

    def step_ended(self, run_id: int, stage: int, step: int, state: str, detail: str) -> None:
        self._db.execute(
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
        """Journal one target of a step; its first mark fixes its place in the stop order."""
        run_id, stage, step = position
        self._db.execute(
            "INSERT INTO targets (run_id, stage, step, target, state, at, seq, duration)"
            " VALUES (?, ?, ?, ?, ?, ?, (SELECT COUNT(*) FROM targets WHERE run_id = ?"
            " AND stage = ? AND step = ?), ?)"
            " ON CONFLICT (run_id, stage, step, target) DO UPDATE SET state = excluded.state,"
            " at = excluded.at, duration = excluded.duration",
            (run_id, stage, step, target, state, time.time(), run_id, stage, step, duration),
        )

    def targets(self, position: tuple[int, int, int]) -> list[tuple[str, str]]:
        """(target, state) of a step, in the order they were first marked."""
        rows = self._db.execute(
            "SELECT target, state FROM targets WHERE run_id = ? AND stage = ? AND step = ?"
            " ORDER BY seq",
            position,
        ).fetchall()
        return [(str(t), str(s)) for t, s in rows]

    def unfinished(self, kind: str) -> RunRecord | None:
        row = self._db.execute(
            "SELECT id, kind, state, reason, drill, started, ended, stage FROM runs"
            " WHERE kind = ? AND state = 'running' ORDER BY id DESC LIMIT 1",
            (kind,),
        ).fetchone()
        return _run(row) if row else None

    def last_run(self, kind: str | None = None) -> RunRecord | None:
        sql = "SELECT id, kind, state, reason, drill, started, ended, stage FROM runs"
        args: tuple[str, ...] = ()
        if kind:
            sql += " WHERE kind = ?"
            args = (kind,)
        row = self._db.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return _run(row) if row else None

    def runs(self, kind: str | None = None, limit: int = 20) -> list[RunRecord]:
        sql = "SELECT id, kind, state, reason, drill, started, ended, stage FROM runs"
        args: tuple[str | int, ...] = ()
        if kind:
            sql += " WHERE kind = ?"
            args = (kind,)
        rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [_run(r) for r in rows]

    def steps(self, run_id: int) -> list[StepRecord]:
        rows = self._db.execute(
            "SELECT stage, step, label, state, started, ended, detail FROM steps"
            " WHERE run_id = ? ORDER BY started, stage, step",
            (run_id,),
        ).fetchall()
        return [StepRecord(*r) for r in rows]

    def learned_duration(self, kind: str = "shutdown", last: int = 5) -> float | None:
        """The median duration of the last completed runs (drills included): what the plan
        really takes here, rather than what someone guessed when writing the site file."""
        rows = self._db.execute(
            "SELECT ended - started FROM runs WHERE kind = ? AND state = 'completed'"
            " AND ended IS NOT NULL ORDER BY id DESC LIMIT ?",
            (kind, last),
        ).fetchall()
        values = [float(r[0]) for r in rows if r[0] is not None]
        return statistics.median(values) if values else None


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
