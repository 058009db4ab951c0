"""The outbox on its own: order, acknowledgement, restart, windows, the bounds and a full disk."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from facility_agent.outbox import Channel, Outbox, Row
from tests.fixtures.waiting import until


class Taker:
    """An output that records what it is handed and acknowledges on demand."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.channel: Channel | None = None
        self.max_held = 0

    def __call__(self, rows: list[Row]) -> None:
        self.rows.extend(rows)
        assert self.channel is not None
        self.max_held = max(self.max_held, self.channel.held)

    def ack_all(self) -> None:
        assert self.channel is not None
        for row in self.rows[-self.channel.held :] if self.channel.held else []:
            self.channel.ack(row.seq)


def attach(outbox: Outbox, sink: str = "mqtt", window: int | None = None) -> Taker:
    taker = Taker()
    taker.channel = outbox.channel(sink, taker, window)
    return taker


async def test_rows_arrive_in_order_only_after_commit_and_ack_removes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    taker = attach(box)
    await box.open()
    for n in range(50):
        box.put("mqtt", "event", "t", str(n).encode(), 1000.0 + n)
    assert taker.rows == []  # nothing handed over before its transaction committed
    await until(lambda: len(taker.rows) == 50)
    assert [r.payload for r in taker.rows] == [str(n).encode() for n in range(50)]
    assert [r.created for r in taker.rows] == [1000.0 + n for n in range(50)]
    for row in taker.rows[:20]:
        assert taker.channel is not None
        taker.channel.ack(row.seq)
    assert await box.flush()
    await box.close()

    again = Outbox(tmp_path / "o.sqlite")
    second = attach(again)
    await again.open()
    await until(lambda: len(second.rows) == 30, what="the 30 unacknowledged rows replayed")
    assert [r.payload for r in second.rows] == [str(n).encode() for n in range(20, 50)]
    await again.close()


async def test_a_backlog_streams_in_windows_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", window=100)
    await box.open()
    for n in range(3000):
        box.put("influx", "reading", "", str(n).encode(), None)
    assert await box.flush()
    await box.close()

    box = Outbox(tmp_path / "o.sqlite", window=100)
    taker = attach(box, "influx")
    await box.open()
    assert box.stats()["rows"]["influx"] == 3000
    seen = 0
    while seen < 3000:
        await until(lambda n=seen: len(taker.rows) > n, what=f"more than {seen} rows")
        assert taker.channel is not None
        for row in taker.rows[seen:]:
            taker.channel.ack(row.seq)
        seen = len(taker.rows)
        await asyncio.sleep(0)
    assert [int(r.payload) for r in taker.rows] == list(range(3000))
    assert taker.max_held <= 100
    # New rows after the backlog arrive live.
    box.put("influx", "reading", "", b"live", None)
    await until(lambda: taker.rows[-1].payload == b"live")
    await box.close()


async def test_outputs_are_independent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    a, b = attach(box, "a"), attach(box, "b")
    await box.open()
    box.put("a", "event", "", b"1", None)
    box.put("b", "event", "", b"2", None)
    await until(lambda: len(a.rows) == 1 and len(b.rows) == 1)
    assert a.rows[0].payload == b"1" and b.rows[0].payload == b"2"
    a.ack_all()
    assert await box.flush()
    assert box.stats()["rows"] == {"a": 0, "b": 1}
    await box.close()


async def test_age_bound_drops_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_age=60)
    await box.open()
    for n in range(10):
        box.put("mqtt", "event", "", b"old", time.time() - 3600 + n)
    box.put("mqtt", "event", "", b"new", None)
    assert await box.flush()
    box._last_maintenance = 0  # next transaction applies the bounds
    box.put("mqtt", "event", "", b"newer", None)
    assert await box.flush()
    assert box.dropped[("mqtt", "age")] == 10
    assert box.stats()["rows"]["mqtt"] == 2
    assert any("age bound" in r.getMessage() for r in caplog.records)
    await box.close()


async def test_size_bound_drops_states_before_events(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=256 * 1024)
    await box.open()
    for n in range(20):
        box.put("mqtt", "event", "", f"event {n}".encode(), None)
    blob = b"x" * 2000
    for _ in range(400):  # ~800 kB of states
        box.put("mqtt", "state", "", blob, None)
    assert await box.flush()
    for _ in range(5):
        box._last_maintenance = 0
        box.put("mqtt", "state", "", blob, None)
        assert await box.flush()
    assert box.stats()["bytes"] <= 256 * 1024 * 1.2
    assert box.dropped[("mqtt", "size")] > 0
    taker = attach(box, "mqtt", window=10_000)
    await until(lambda: len(taker.rows) == box.stats()["rows"]["mqtt"] > 0)
    events = [r for r in taker.rows if r.kind == "event"]
    assert len(events) == 20  # every event survived the policy
    await box.close()


async def test_full_disk_is_logged_policy_applied_and_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLITE_FULL, as a full filesystem gives it, produced by capping the file's page count."""
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1000**3)
    taker = attach(box, window=100_000)
    await box.open()
    blob = b"y" * 1000
    for _ in range(200):
        box.put("mqtt", "state", "", blob, None)
    assert await box.flush()
    loop = asyncio.get_running_loop()

    def cap() -> None:
        assert box._db is not None
        pages = box._db.execute("PRAGMA page_count").fetchone()[0]
        box._db.execute(f"PRAGMA max_page_count={pages}")

    await loop.run_in_executor(box._executor, cap)
    with caplog.at_level(logging.ERROR, "facility_agent.outbox.store"):
        for _ in range(300):
            box.put("mqtt", "state", "", blob, None)
        box.put("mqtt", "event", "", b"the event", None)
        await until(lambda: box.errors["disk_full"] > 0, what="SQLITE_FULL seen")
        # The policy frees room (oldest states), the retry stores what waited in memory.
        await until(lambda: any(r.payload == b"the event" for r in taker.rows), 20, "event stored")
    assert box.dropped[("mqtt", "size")] > 0
    errors = [r.getMessage() for r in caplog.records if "cannot write the outbox" in r.getMessage()]
    assert len(errors) == 1 and "full" in errors[0]
    await box.close()


async def test_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    box = Outbox(blocker / "o.sqlite")
    with pytest.raises(Exception, match=r"cannot open the outbox .*o\.sqlite"):
        await box.open()
