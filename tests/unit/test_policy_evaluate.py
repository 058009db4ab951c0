"""Policy rules as pure functions of states and time: debounce, corroboration, dead UPS."""

from __future__ import annotations

from facility_agent.config.policy import ConfirmCondition, GroupConfig
from facility_agent.core.model import DeviceState, utcnow
from facility_agent.policy.evaluate import GroupEvaluator, Held, power_view


def ups(name: str, flags: str, comm: str = "ok", **metrics: float) -> DeviceState:
    m = {k.replace("_", "."): v for k, v in metrics.items()}
    return DeviceState(name, "nut", utcnow(), comm, tuple(flags.split()), m)  # type: ignore[arg-type]


def group(**kw: object) -> GroupConfig:
    base: dict[str, object] = {"id": "ups", "members": ["ups-a", "ups-b"], "min": 1, "hold": 1}
    return GroupConfig.model_validate({**base, **kw})


def test_held_needs_the_condition_to_hold_continuously() -> None:
    h = Held(2.0)
    assert not h.update(True, 0.0)
    assert not h.update(True, 1.9)
    assert not h.update(False, 2.0)  # a blip resets it
    assert not h.update(True, 3.0)
    assert h.update(True, 5.0)


def test_group_status_debounced() -> None:
    ev = GroupEvaluator(group())
    both = {"ups-a": ups("ups-a", "OL"), "ups-b": ups("ups-b", "OL")}
    assert ev.update(both, 0).status == "ok"
    one = {**both, "ups-b": ups("ups-b", "OB")}
    assert ev.update(one, 1).status == "ok"  # not yet held
    assert ev.update(one, 2.5).status == "degraded"
    assert ev.view is not None and ev.view.down == ["ups-b"]
    none = {"ups-a": ups("ups-a", "OB"), "ups-b": ups("ups-b", "OB")}
    ev.update(none, 3)
    assert ev.update(none, 4.1).status == "lost"
    assert ev.update(both, 5).status == "lost"
    assert ev.update(both, 6.1).status == "ok"


def test_metric_members_for_network_and_psu() -> None:
    g = group(kind="network", members=["gw:uplink.wan-1.status", "gw:uplink.wan-2.status"], min=2)
    ev = GroupEvaluator(g)
    gw = DeviceState(
        "gw",
        "net",
        utcnow(),
        "ok",
        (),
        {"uplink.wan-1.status": "up", "uplink.wan-2.status": "down"},
    )
    view = ev.update({"gw": gw}, 0)
    assert view.status == "lost" and view.down == ["gw:uplink.wan-2.status"]


def test_group_min_larger_than_members_is_refused() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="min"):
        group(min=3)


def test_runtime_is_the_min_th_best_member() -> None:
    states = {
        "ups-a": ups("ups-a", "OB", battery_runtime=600),
        "ups-b": ups("ups-b", "OB", battery_runtime=1200),
    }
    assert power_view(group(), states).runtime == 1200
    assert power_view(group(min=2), states).runtime == 600


def test_spurious_low_battery_is_not_believed() -> None:
    states = {"ups-a": ups("ups-a", "OL LB"), "ups-b": ups("ups-b", "OL")}
    pv = power_view(group(), states)
    assert pv.low_battery == [] and pv.unconfirmed_low == ["ups-a"]
    assert not pv.critical(1, True)
    # On battery, LB is believed, unless another source still sees input power.
    states = {"ups-a": ups("ups-a", "OB LB"), "ups-b": ups("ups-b", "OB LB")}
    assert power_view(group(), states).critical(1, True)
    pdu = DeviceState("pdu-a", "snmp", utcnow(), "ok", (), {"input.voltage": 231.0})
    confirm = [ConfirmCondition(device="pdu-a", metric="input.voltage", below=100)]
    pv = power_view(group(), {**states, "pdu-a": pdu}, confirm)
    assert pv.low_battery == [] and not pv.critical(1, True)
    dead_pdu = DeviceState("pdu-a", "snmp", utcnow(), "ok", (), {"input.voltage": 0.0})
    assert power_view(group(), {**states, "pdu-a": dead_pdu}, confirm).critical(1, True)


def test_dead_ups_rule() -> None:
    states = {
        "ups-a": ups("ups-a", "OB", comm="lost"),
        "ups-b": ups("ups-b", "OL", comm="lost"),
    }
    pv = power_view(group(min=2), states)
    assert pv.dead == ["ups-a"] and pv.online == ["ups-b"]  # lost on line: assumed on line
    assert pv.critical(2, count_dead=True)
    assert not pv.critical(2, count_dead=False)
