"""The suite's short run of bench/fuzz.py: each parser gets a fixed, seeded sequence of generated
and mutated inputs (about 20 s of work each on an idle core) and must give only its documented
typed errors, no input over 100 ms of CPU, and bounded memory. The full million per parser is
`bench/fuzz.py` (docs/benchmarks.md)."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import fuzz

#: Inputs per target: ~20 s each unloaded (rates in docs/benchmarks.md).
INPUTS = {"nut": 150_000, "snmp": 50_000, "modbus": 140_000, "ipmi": 300_000, "yaml": 20_000}
#: Under heavy load a target stops early (a prefix of the same sequence), never runs unbounded.
CAP_S = 90.0


@pytest.mark.parametrize("name", list(INPUTS))
def test_parser_survives_its_fuzzer(name: str) -> None:
    res = fuzz.fuzz(fuzz.TARGETS[name](), INPUTS[name], seed=1, deadline=time.monotonic() + CAP_S)
    assert res.inputs >= min(INPUTS[name], 5000), "too few inputs ran to mean anything"
    assert not res.crashes, "\n".join(
        f"{c.error} at {c.where}: {c.example}" for c in res.crashes.values()
    )
    assert not res.hangs, res.hangs[:3]
    assert res.typed_errors > 0, "the mutations never reached an error path"
    assert res.traced_peak_mb < 50, f"one input allocated {res.traced_peak_mb:.1f} MB"
    assert res.rss_peak_mb - res.rss_start_mb < 200, "memory grew without bound"


def test_the_same_seed_gives_the_same_inputs() -> None:
    for name, make in fuzz.TARGETS.items():
        target = make()
        a, b = random.Random(f"{name}:7"), random.Random(f"{name}:7")
        assert [repr(target.generate(a)) for _ in range(50)] == [
            repr(target.generate(b)) for _ in range(50)
        ], name


def test_the_harness_reports_crashes_and_hangs() -> None:
    def run(x: int) -> None:
        if x % 3 == 0:
            raise KeyError(x)  # not an allowed error: a crash
        if x % 3 == 1:
            raise ValueError(x)  # the allowed one
        if x == 5:
            end = time.thread_time() + 0.15
            while time.thread_time() < end:  # 150 ms of CPU, every time: a hang
                pass

    target = fuzz.Target("meta", lambda rng: rng.randrange(9), run, (ValueError,))
    res: Any = fuzz.fuzz(target, 40, seed=1)
    [crash] = res.crashes.values()
    assert crash.error.startswith("KeyError") and crash.where.startswith("test_fuzz.py:")
    assert res.typed_errors > 0 and res.hangs and all("ms CPU: 5" in h for h in res.hangs)
