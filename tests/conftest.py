"""Fixture modules live in tests/fixtures/, one per peer, so they can be read on their own."""

import pytest

pytest_plugins = [
    "tests.fixtures.procs",
    "tests.fixtures.nut",
    "tests.fixtures.mosquitto",
    "tests.fixtures.simulator",
    "tests.fixtures.modbus",
    "tests.fixtures.snmp",
    "tests.fixtures.ipmi",
    "tests.fixtures.outputs",
    "tests.fixtures.threads",
    "tests.fixtures.sshd",
    "tests.fixtures.podman",
    "tests.fixtures.libvirtd",
]


@pytest.fixture(autouse=True)
def _isolated_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test gets its own state directory (journal, outbox) unless its site file names one.

    Without this, every agent a test starts with site `lab1` and no `state_dir` would share
    /var/lib/facility-agent/lab1: the outbox one test's killed agent left would be replayed into
    the next test's broker. Agents started as subprocesses inherit the variable.
    """
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path_factory.mktemp("state")))
