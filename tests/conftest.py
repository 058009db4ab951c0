"""Fixture modules live in tests/fixtures/, one per peer, so they can be read on their own."""

pytest_plugins = [
    "tests.fixtures.procs",
    "tests.fixtures.nut",
    "tests.fixtures.mosquitto",
    "tests.fixtures.simulator",
    "tests.fixtures.modbus",
    "tests.fixtures.snmp",
    "tests.fixtures.ipmi",
    "tests.fixtures.outputs",
]
