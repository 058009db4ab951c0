"""docs/architecture.md names every package folder, and only those: the layout stays current."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_layout_table_names_every_package_folder() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = set(re.findall(r"^\| `([\w/]+)/` \|", text, flags=re.M))
    folders = {
        str(init.parent.relative_to(ROOT))
        for top in ("facility_agent", "drivers", "simulators", "facility_wire")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert table == folders, (
        f"docs/architecture.md misses {sorted(folders - table)}, "
        f"names folders gone: {sorted(table - folders)}"
    )


def test_no_module_of_the_agent_imports_a_protocol_folder() -> None:
    """A change to one protocol touches its folder: facility_agent/ imports no driver module
    and no simulator face (the drivers are found through the registry; a drill asks each
    driver to aim its devices at the simulator)."""
    offenders = []
    for path in (ROOT / "facility_agent").rglob("*.py"):
        rel = path.relative_to(ROOT)
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(from|import) facility_agent\.(drivers|simulators\.faces)\.", line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


#: A name in the agent's code that is a protocol's: only the contract's stage key.
PROTOCOL_NAME = re.compile(r"(?i)snmp|modbus|ipmi|(^|_)nut(_|$)|upsd|upsmon")
CONTRACT_NAMES = {"notify_nut_secondaries"}


def test_no_name_in_the_agent_is_a_protocols() -> None:
    """No variable, function, class or attribute of facility_agent/ is named after a
    protocol: what is per protocol is asked of the drivers (their options, their sections,
    where the simulator serves them), never spelled out beside the core."""
    offenders = []
    for path in (ROOT / "facility_agent").rglob("*.py"):
        rel = path.relative_to(ROOT)
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.type != tokenize.NAME or token.string in CONTRACT_NAMES:
                continue
            if PROTOCOL_NAME.search(token.string):
                offenders.append(f"{rel}:{token.start[0]}: {token.string}")
    assert not offenders, "\n".join(offenders)


def test_plugins_written_against_the_first_import_paths_still_import() -> None:
    """A third-party driver from 0.1 imported facility_agent.driver/.model/.units."""
    from facility_agent import driver, model, units
    from facility_agent.core import driver as core_driver
    from facility_agent.core import model as core_model
    from facility_agent.core import units as core_units

    for old, new in ((driver, core_driver), (model, core_model), (units, core_units)):
        for name in old.__all__:
            assert getattr(old, name) is getattr(new, name), name
