"""Drivers are plugins: a third party's registers exactly as the built-in ones do."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from facility_agent.core.registry import ENTRY_POINT_GROUP, driver_classes

PLUGIN = """
from facility_agent.core.driver import DeviceConfig, Driver
from facility_agent.core.model import Sample, utcnow


class ThermoConfig(DeviceConfig):
    probe: str


class ThermoDriver(Driver):
    name = "thermo"
    config_model = ThermoConfig

    async def poll(self) -> Sample:
        return Sample(self.config.id, utcnow(), (), {"ambient.temperature": 21.5})
"""


def test_builtin_nut_driver_comes_from_the_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert "nut" in names
    assert driver_classes()["nut"].name == "nut"


def test_third_party_driver_is_found_and_validated(tmp_path: Path) -> None:
    site_packages = tmp_path / "site"
    site_packages.mkdir()
    (site_packages / "thermo_plugin.py").write_text(PLUGIN)
    dist = site_packages / "thermo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thermo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nthermo = thermo_plugin:ThermoDriver\n"
    )
    good = tmp_path / "good.yaml"
    good.write_text("site: lab1\ndevices:\n  - {id: room, driver: thermo, probe: p1}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: lab1\ndevices:\n  - {id: room, driver: thermo}\n")
    env = {**os.environ, "PYTHONPATH": str(site_packages)}
    cli = [sys.executable, "-m", "facility_agent.cli", "check", "-c"]
    ok = subprocess.run([*cli, str(good)], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run([*cli, str(bad)], capture_output=True, text=True, env=env, timeout=60)
    assert failed.returncode == 1
    assert "devices[0].probe (line 3): required key is missing" in failed.stderr
    # And it polls, through the same agent path as a built-in driver.
    run = textwrap.dedent(
        """
        import asyncio
        import sys
        from facility_agent.runtime.agent import Agent
        from facility_agent.config.site import load_site

        async def main():
            agent = Agent(load_site(sys.argv[1]), sinks=[])
            states = []
            agent.on_state(states.append)
            await agent.start()
            await asyncio.sleep(0.3)
            await agent.stop()
            print(states[0].metrics["ambient.temperature"])

        asyncio.run(main())
        """
    )
    polled = subprocess.run(
        [sys.executable, "-c", run, str(good)], capture_output=True, text=True, env=env, timeout=60
    )
    assert polled.stdout.strip() == "21.5", polled.stderr


def test_broken_plugin_is_reported_not_fatal(tmp_path: Path) -> None:
    site_packages = tmp_path / "site"
    dist = site_packages / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nbroken = no_such_module:Driver\n"
    )
    site = tmp_path / "site.yaml"
    site.write_text("site: lab1\ndevices:\n  - {id: ups-a, driver: nut, host: 127.0.0.1, ups: u}\n")
    env = {**os.environ, "PYTHONPATH": str(site_packages)}
    out = subprocess.run(
        [sys.executable, "-m", "facility_agent.cli", "check", "-c", str(site)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "driver plugin 'broken'" in out.stderr and "failed to load" in out.stderr
