#!/bin/sh
# Runs every benchmark, then regenerates docs/benchmarks.md from their results (bench/out/).
# About 6 minutes. Needs root (upsd, dummy-ups and upsmon run as root), NUT and mosquitto.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" bench/detection_latency.py "$@"
"$PY" bench/poll_capacity.py
"$PY" bench/outbox_bench.py       # ~4 min; writes its own section of docs/benchmarks.md
"$PY" bench/policy_decision.py    # ~1 min; writes its own section of docs/benchmarks.md
"$PY" bench/journal_stall.py      # ~1 min; writes its own section of docs/benchmarks.md
"$PY" bench/write_docs.py
