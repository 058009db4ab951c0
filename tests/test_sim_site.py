"""The simulated site's physics and scenarios, without any I/O or real time."""

from __future__ import annotations

from pathlib import Path

import pytest

from facility_agent.simulators.clock import ManualClock, SimClock
from facility_agent.simulators.scenario import (
    ScenarioError,
    ScenarioRunner,
    apply_action,
    bundled_scenarios,
    load_scenario,
    parse_scenario,
    parse_seconds,
)
from facility_agent.simulators.site import SimulatedSite, SiteConfigError, SiteError


@pytest.fixture
def site() -> SimulatedSite:
    return SimulatedSite.default()


def status(site: SimulatedSite, ups: str = "ups-a") -> list[str]:
    return site.nut_vars(ups)["ups.status"].split()


def no_generator(site: SimulatedSite) -> None:
    apply_action(site, "generator.crank_fail")


# ---- clock -----------------------------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock()
    assert clock.now() == 0.0
    assert clock.advance(2.5) == 2.5
    clock.set(10)
    assert clock.now() == 10
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_sim_clock_speed_is_continuous() -> None:
    clock = SimClock(speed=1000)
    first = clock.now()
    clock.speed = 1
    assert clock.now() >= first  # no jump back when slowing down
    with pytest.raises(ValueError):
        SimClock(speed=0)


# ---- the default site ------------------------------------------------------------------------


def test_default_site_layout_and_nut_vars(site: SimulatedSite) -> None:
    assert site.ups_names() == ["ups-a", "ups-b"]
    assert set(site.pdus) == {"pdu-a", "pdu-b"}
    assert set(site.servers) == {"srv-01", "srv-02", "srv-03", "srv-04"}
    assert set(site.uplinks) == {"wan-1", "wan-2"}
    v = site.nut_vars("ups-a")
    for name in [
        "device.mfr",
        "device.model",
        "ups.mfr",
        "ups.model",
        "ups.serial",
        "ups.status",
        "ups.load",
        "ups.realpower.nominal",
        "ups.realpower",
        "battery.charge",
        "battery.charge.low",
        "battery.runtime",
        "battery.runtime.low",
        "battery.voltage",
        "input.voltage",
        "input.frequency",
        "output.voltage",
        "ups.temperature",
        "ups.delay.shutdown",
        "ups.delay.start",
    ]:
        assert name in v, name
    assert v["ups.status"] == "OL"
    assert v["battery.charge"] == "100"
    # 4 servers, each split over both feeds: half of 960 W on each UPS.
    assert v["ups.realpower"] == "480"
    assert v["ups.load"] == str(round(100 * 480 / 2700))
    assert {"test.battery.start", "load.off", "load.on", "shutdown.return"} <= set(
        site.nut_commands("ups-a")
    )
    with pytest.raises(SiteError) as e:
        site.nut_vars("nope")
    assert e.value.code == "UNKNOWN-UPS"


def test_same_inputs_same_outputs() -> None:
    a, b = SimulatedSite.default(), SimulatedSite.default()
    for s in (a, b):
        apply_action(s, "utility.fail")
        s.step(123.4)
    assert a.snapshot() == b.snapshot()


# ---- UPS battery -----------------------------------------------------------------------------


def test_charge_and_runtime_follow_the_load(site: SimulatedSite) -> None:
    no_generator(site)
    apply_action(site, "utility.fail")
    site.step(1)
    assert status(site) == ["OB", "DISCHRG"]
    ups = site.ups["ups-a"]
    # At 480 W through a 92 % inverter, 400 Wh last 400 * 0.92 / 480 h.
    assert ups.runtime == pytest.approx(400 * 0.92 / 480 * 3600, rel=0.01)
    charge0 = ups.charge
    site.step(60)
    drop_light = charge0 - ups.charge
    assert drop_light == pytest.approx(480 / 0.92 * 60 / 3600 / 400 * 100, rel=0.01)
    # Double the load: the runtime halves, the charge falls twice as fast.
    runtime_light = ups.runtime
    for name in site.servers:
        apply_action(site, "server.load", name, site.servers[name].load_w * 2)
    site.step(0.5)
    assert ups.runtime == pytest.approx(runtime_light / 2, rel=0.01)
    charge1 = ups.charge
    site.step(60)
    assert charge1 - ups.charge == pytest.approx(2 * drop_light, rel=0.02)
    assert int(site.nut_vars("ups-a")["battery.runtime"]) == round(ups.runtime)


def test_recharges_when_input_returns(site: SimulatedSite) -> None:
    no_generator(site)
    apply_action(site, "utility.fail")
    site.step(300)
    low = site.ups["ups-a"].charge
    apply_action(site, "utility.restore")
    site.step(1)
    assert status(site) == ["OL", "CHRG"]
    site.step(600)
    assert site.ups["ups-a"].charge > low
    site.step(4 * 3600)
    assert status(site) == ["OL"]
    assert site.nut_vars("ups-a")["battery.charge"] == "100"


def test_low_battery_from_charge_threshold(site: SimulatedSite) -> None:
    no_generator(site)
    apply_action(site, "ups.battery_charge", "ups-a", 25)
    apply_action(site, "utility.fail")
    site.step(1)
    assert "LB" not in status(site)
    site.set_nut_var("ups-a", "battery.charge.low", "30")
    site.step(0.5)
    assert status(site) == ["OB", "DISCHRG", "LB"]
    # On line a low charge is not LB: the load is safe.
    apply_action(site, "utility.restore")
    site.step(1)
    assert "LB" not in status(site)


def test_low_battery_from_runtime_threshold(site: SimulatedSite) -> None:
    no_generator(site)
    apply_action(site, "utility.fail")
    site.step(1)
    assert "LB" not in status(site)
    site.set_nut_var("ups-a", "battery.runtime.low", str(round(site.ups["ups-a"].runtime + 60)))
    site.step(0.5)
    assert "LB" in status(site)
    assert site.ups["ups-a"].charge > 90


def test_aged_battery_reports_optimistic_runtime_and_dies_early(site: SimulatedSite) -> None:
    no_generator(site)
    apply_action(site, "ups.battery_health", "ups-a", 0.35)
    assert site.nut_vars("ups-a")["battery.charge"] == "100"  # the UPS cannot tell
    apply_action(site, "utility.fail")
    site.step(1)
    ups_a, ups_b = site.ups["ups-a"], site.ups["ups-b"]
    reported = ups_a.runtime
    assert ups_a.real_runtime == pytest.approx(0.35 * reported, rel=0.01)
    assert ups_b.real_runtime == pytest.approx(ups_b.runtime, rel=0.001)
    died_after = ups_a.real_runtime + 5
    assert died_after < reported / 2
    site.step(died_after)
    assert "OFF" in status(site)
    assert site.ups["ups-a"].off_reason == "battery exhausted"
    # The A feed is gone, the servers live on their B PSU alone.
    assert not site.pdus["pdu-a"].live
    for server in site.servers.values():
        assert server.state == "running"
        assert server.psu_live == [False, True]
    assert ups_b.load_w == pytest.approx(960, rel=0.001)


def test_battery_test_flags_an_aged_battery(site: SimulatedSite) -> None:
    site.run_nut_command("ups-a", "test.battery.start")
    site.step(1)
    assert status(site) == ["OL", "DISCHRG"]
    assert site.nut_vars("ups-a")["ups.test.result"] == "In progress"
    site.step(10)
    assert site.nut_vars("ups-a")["ups.test.result"] == "Done and passed"
    apply_action(site, "ups.battery_health", "ups-a", 0.4)
    site.run_nut_command("ups-a", "test.battery.start")
    site.step(11)
    assert "RB" in status(site)


def test_exhausted_battery_drops_servers_and_they_boot_on_return(site: SimulatedSite) -> None:
    no_generator(site)
    apply_action(site, "utility.fail")
    site.step(3 * 3600)
    assert status(site, "ups-a") == ["OB", "OFF"]
    assert all(s.state == "off" and s.off_reason == "power lost" for s in site.servers.values())
    apply_action(site, "utility.restore")
    site.step(29)
    assert "OFF" in status(site)  # ups.delay.start is 30 s
    site.step(2)
    assert "OFF" not in status(site)
    site.step(1)
    assert all(s.state == "booting" for s in site.servers.values())
    site.step(60)
    assert all(s.state == "running" for s in site.servers.values())


# ---- UPS commands and variables --------------------------------------------------------------


def test_shutdown_return_waits_for_power_then_restarts(site: SimulatedSite) -> None:
    no_generator(site)
    apply_action(site, "utility.fail")
    site.step(1)
    site.run_nut_command("ups-a", "shutdown.return")
    assert site.nut_vars("ups-a")["ups.timer.shutdown"] == "20"
    site.step(19)
    assert "OFF" not in status(site)
    site.step(1.5)
    assert status(site) == ["OB", "OFF"]
    site.step(600)
    assert status(site) == ["OB", "OFF"]  # no power, stays off
    apply_action(site, "utility.restore")
    site.step(29)
    assert "OFF" in status(site)
    site.step(1.5)
    assert status(site)[0] == "OL" and "OFF" not in status(site)


def test_shutdown_return_on_line_power_cycles(site: SimulatedSite) -> None:
    site.run_nut_command("ups-b", "shutdown.return")
    site.step(20.5)
    assert "OFF" in status(site, "ups-b")
    site.step(30)
    assert "OFF" not in status(site, "ups-b")


def test_shutdown_stayoff_and_load_commands(site: SimulatedSite) -> None:
    site.run_nut_command("ups-a", "shutdown.stayoff")
    site.step(21)
    assert "OFF" in status(site)
    site.step(600)
    assert "OFF" in status(site)
    site.run_nut_command("ups-a", "load.on")
    site.step(0.5)
    assert "OFF" not in status(site)
    site.run_nut_command("ups-a", "load.off")
    site.step(0.5)
    assert status(site) == ["OL", "OFF"]
    assert site.nut_vars("ups-a")["output.voltage"] == "0.0"
    site.run_nut_command("ups-a", "shutdown.return")
    site.run_nut_command("ups-a", "shutdown.stop")
    site.run_nut_command("ups-a", "load.on")
    site.step(60)
    assert status(site) == ["OL"]
    with pytest.raises(SiteError) as e:
        site.run_nut_command("ups-a", "no.such.command")
    assert e.value.code == "CMD-NOT-SUPPORTED"


def test_fsd_flag_until_power_cycle(site: SimulatedSite) -> None:
    site.set_fsd("ups-a")
    assert status(site)[0] == "FSD"
    site.run_nut_command("ups-a", "shutdown.return")
    site.step(51)
    assert "FSD" not in status(site)


def test_writable_variables_validate(site: SimulatedSite) -> None:
    site.set_nut_var("ups-a", "ups.delay.shutdown", "5")
    assert site.nut_vars("ups-a")["ups.delay.shutdown"] == "5"
    for var, value, code in [
        ("battery.charge.low", "abc", "INVALID-VALUE"),
        ("battery.charge.low", "101", "INVALID-VALUE"),
        ("ups.status", "OB", "READONLY"),
        ("no.such.var", "1", "VAR-NOT-SUPPORTED"),
        ("ups.id", "x" * 33, "TOO-LONG"),
    ]:
        with pytest.raises(SiteError) as e:
            site.set_nut_var("ups-a", var, value)
        assert e.value.code == code, var
    assert set(site.nut_rw_vars("ups-a")) >= {
        "battery.charge.low",
        "battery.runtime.low",
        "ups.delay.shutdown",
    }


# ---- generator and ATS -----------------------------------------------------------------------


def test_generator_crank_fails_then_locks_out(site: SimulatedSite) -> None:
    gen = site.generator
    assert gen is not None
    apply_action(site, "generator.crank_fail")
    apply_action(site, "utility.fail")
    site.step(2.5)
    assert gen.state == "stopped"  # start_delay 3 s rides out blips
    site.step(1)
    assert gen.state == "cranking" and gen.attempt == 1
    # 3 attempts of 3 s with 2 s rests: locked out 13 s after the first crank.
    site.step(12)
    assert gen.state == "cranking" and gen.attempt == 3
    site.step(1)
    assert gen.state == "fault"
    assert "3 crank attempts" in gen.fault_reason
    assert site.ats is not None and site.ats.source == "utility" and not site.ats.live
    apply_action(site, "generator.crank_ok")
    apply_action(site, "generator.reset")
    site.step(3.5 + 3 + 5 + 2.5)
    assert gen.state == "running"
    assert site.ats.source == "generator"


def test_generator_second_attempt_succeeds(site: SimulatedSite) -> None:
    gen = site.generator
    assert gen is not None
    apply_action(site, "generator.crank_fail", value=1)
    apply_action(site, "utility.fail")
    site.step(3 + 3 + 2 + 3 + 0.5)
    assert gen.state == "warming" and gen.attempt == 2 and gen.starts == 1


def test_ats_transfers_and_returns(site: SimulatedSite) -> None:
    gen, ats = site.generator, site.ats
    assert gen is not None and ats is not None
    apply_action(site, "utility.fail")
    site.step(0.5)
    assert status(site) == ["OB", "DISCHRG"]
    site.step(3 + 3 + 5)  # start delay, crank, warm-up
    assert gen.state == "running"
    assert ats.source == "utility"
    site.step(1.4)
    assert ats.source == "utility"  # transfer delay 2 s
    site.step(0.2)
    assert ats.source == "generator" and ats.live
    site.step(0.5)
    assert status(site) == ["OL", "CHRG"]
    assert site.nut_vars("ups-a")["input.voltage"] == "230.0"
    assert gen.load_w > 960  # the load and the recharging
    fuel = gen.fuel_litres
    site.step(600)
    assert gen.fuel_litres < fuel
    apply_action(site, "utility.restore")
    site.step(9.5)
    assert ats.source == "generator"  # retransfer delay 10 s
    site.step(1)
    assert ats.source == "utility" and ats.transfers == 2
    assert gen.state == "cooling"
    site.step(10.5)
    assert gen.state == "stopped"


def test_generator_out_of_fuel_trips(site: SimulatedSite) -> None:
    apply_action(site, "utility.fail")
    site.step(20)
    assert site.ats is not None and site.ats.source == "generator"
    apply_action(site, "generator.fuel", value=0)
    site.step(2)
    assert site.generator is not None and site.generator.state == "fault"
    assert site.generator.fault_reason == "out of fuel"
    assert status(site)[0] == "OB"


# ---- PDUs, servers, uplinks ------------------------------------------------------------------


def test_feed_loss_moves_the_load_to_the_other_psu(site: SimulatedSite) -> None:
    apply_action(site, "pdu.feed_fail", "pdu-a")
    site.step(0.5)
    pdu_a, pdu_b = site.pdus["pdu-a"], site.pdus["pdu-b"]
    assert not pdu_a.live and pdu_a.load_w == 0 and pdu_a.outlet_current(1) == 0
    assert pdu_b.load_w == pytest.approx(960)
    assert pdu_b.outlet_current(1) == pytest.approx(220 / 230)
    for server in site.servers.values():
        assert server.state == "running" and server.psu_live == [False, True]
    apply_action(site, "pdu.feed_restore", "pdu-a")
    site.step(0.5)
    assert all(s.psu_live == [True, True] for s in site.servers.values())


def test_psu_failure_and_server_power(site: SimulatedSite) -> None:
    srv = site.servers["srv-01"]
    apply_action(site, "server.psu_fail", "srv-01", 2)
    site.step(0.5)
    assert srv.psu_live == [True, False]
    assert site.pdus["pdu-a"].outlet_watts(1) == pytest.approx(220)
    apply_action(site, "server.shutdown", "srv-01")
    site.step(14)
    assert srv.state == "shutting_down"
    site.step(1.5)
    assert srv.state == "off" and srv.off_reason == "os shutdown"
    assert site.pdus["pdu-a"].outlet_watts(1) == 0
    apply_action(site, "server.power_on", "srv-01")
    site.step(30.5)
    assert srv.state == "running"
    apply_action(site, "server.power_off", "srv-01")
    assert srv.state == "off"
    with pytest.raises(ScenarioError):
        apply_action(site, "server.psu_fail", "srv-01", 3)


def test_uplinks(site: SimulatedSite) -> None:
    apply_action(site, "uplink.down", "wan-1")
    assert not site.uplinks["wan-1"].up and site.uplinks["wan-2"].up
    apply_action(site, "uplink.up", "wan-1")
    assert site.uplinks["wan-1"].up


# ---- site files ------------------------------------------------------------------------------


def test_site_file_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text(
        "ups: [{name: u1, input: nowhere, battery_wh: -1}]\n"
        "pdus: [{name: p1, feed: u1}]\n"
        "servers: [{name: s1, psus: [{feed: p1, outlet: 1}, {feed: p1, outlet: 1}]}]\n"
    )
    with pytest.raises(SiteConfigError) as e:
        SimulatedSite.from_file(bad)
    assert "ups.0.battery_wh" in str(e.value)
    bad.write_text("ups: [{name: u1, input: nowhere}]\n")
    with pytest.raises(SiteConfigError, match="input 'nowhere'"):
        SimulatedSite.from_file(bad)
    bad.write_text("ups: [{name: x}]\nuplinks: [{name: x}]\n")
    with pytest.raises(SiteConfigError, match="unique"):
        SimulatedSite.from_file(bad)
    with pytest.raises(SiteConfigError, match="cannot read"):
        SimulatedSite.from_file(tmp_path / "missing.yaml")


def test_minimal_site_without_generator(tmp_path: Path) -> None:
    f = tmp_path / "site.yaml"
    f.write_text("ups: [{name: u1, input: utility}]\n")
    site = SimulatedSite.from_file(f)
    apply_action(site, "utility.fail")
    site.step(1)
    assert status(site, "u1") == ["OB"]  # no load: on battery but not discharging
    with pytest.raises(ScenarioError, match="no generator"):
        apply_action(site, "generator.reset")


# ---- scenarios -------------------------------------------------------------------------------


def test_bundled_scenarios_load_and_fit_the_default_site(site: SimulatedSite) -> None:
    names = bundled_scenarios()
    assert {"utility-outage", "generator-backup", "comm-loss", "aged-battery"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name
        scenario.check_against(site)


def test_parse_seconds() -> None:
    assert parse_seconds(10) == 10
    assert parse_seconds("10s") == 10
    assert parse_seconds("500ms") == 0.5
    assert parse_seconds("2m") == 120
    assert parse_seconds("1m30s") == 90
    for bad in ("ten", "10 parsecs", -1, True, ""):
        with pytest.raises(ValueError):
            parse_seconds(bad)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"at": "1s", "do": "utility.explode"}], "steps.0: unknown action 'utility.explode'"),
        ([{"at": "1s", "do": "ups.comm_dead"}], "steps.0: ups.comm_dead needs a target"),
        ([{"at": "1s", "do": "utility.fail", "target": "x"}], "takes no target"),
        ([{"at": "soon", "do": "utility.fail"}], "steps.0.at: 'soon' is not a time"),
        ([{"at": "1s", "do": "generator.fuel"}], "needs a value"),
        ([{"at": "1s", "do": "ups.command", "target": "u", "value": "boom"}], "unknown command"),
        ([{"at": "1s", "do": "utility.fail", "when": 3}], "steps.0.when: Extra inputs"),
        ([{"at": "2m", "do": "utility.fail"}], "steps after the end (60s): utility.fail at 120s"),
    ],
)
def test_scenario_errors_are_clear(steps: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse_scenario({"name": "bad", "duration": "60s", "steps": steps}, "bad.yaml")
    assert "bad.yaml: invalid scenario" in str(e.value)
    assert message in str(e.value)


def test_scenario_file_errors(tmp_path: Path, site: SimulatedSite) -> None:
    with pytest.raises(ScenarioError, match="no bundled scenario 'nope'; bundled: "):
        load_scenario("nope")
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nduration: 10\nsteps: [{at: 1, do: ups.comm_dead, target: ups-z}]\n")
    scenario = load_scenario(f)
    with pytest.raises(ScenarioError, match=r"steps\.0: ups\.comm_dead: no ups named 'ups-z'"):
        ScenarioRunner(site, scenario, ManualClock())
    f.write_text("name: s\nduration: [\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(str(f))


def test_steps_fire_at_their_exact_time_whatever_the_jump(site: SimulatedSite) -> None:
    scenario = parse_scenario(
        {
            "name": "t",
            "duration": "100s",
            "steps": [
                {"at": "40s", "do": "utility.restore"},
                {"at": "10s", "do": "utility.fail"},
                {"at": "10s", "do": "generator.crank_fail"},
                {"at": "5s", "do": "ups.comm_dead", "target": "ups-b"},
            ],
        }
    )
    clock = ManualClock()
    fired: list[tuple[float, str]] = []
    runner = ScenarioRunner(
        site, scenario, clock, on_step=lambda a: fired.append((a.time, a.step.do))
    )
    clock.advance(4.9)
    runner.advance()
    assert fired == [] and site.time == pytest.approx(4.9)
    clock.advance(95.1)  # one big jump over every step
    runner.advance()
    assert fired == [
        (5.0, "ups.comm_dead"),
        (10.0, "utility.fail"),
        (10.0, "generator.crank_fail"),  # same time: file order
        (40.0, "utility.restore"),
    ]
    assert runner.finished and runner.pending == []
    # The outage happened in between: 30 s on battery, the generator tried and failed.
    assert site.ups["ups-a"].charge < 100
    assert site.generator is not None and site.generator.state == "fault"


def test_utility_outage_scenario_timeline(site: SimulatedSite) -> None:
    clock = ManualClock()
    runner = ScenarioRunner(site, load_scenario("utility-outage"), clock)
    seen: dict[float, str] = {}
    for t in (5, 11, 30, 39.5, 41, 90):
        runner.advance(t)
        seen[t] = site.nut_vars("ups-a")["ups.status"]
    assert seen[5] == "OL"
    assert seen[11] == "OB DISCHRG"
    assert seen[30] == "OB DISCHRG"
    assert seen[39.5] == "OB DISCHRG"
    assert seen[41] == "OL CHRG"
    assert site.generator is not None and site.generator.state == "fault"
    assert runner.finished
