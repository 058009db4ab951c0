"""docs/architecture.md names every package folder, and only those: the layout stays current."""

from __future__ import annotations

import re
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
    (the drivers are found through the registry; tools that run the simulated site excepted,
    since they aim a site's devices at the simulator's protocol faces)."""
    offenders = []
    for path in (ROOT / "facility_agent").rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "tools":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(from|import) facility_agent\.drivers\.", line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
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
