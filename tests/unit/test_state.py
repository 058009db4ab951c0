"""State transitions become events exactly once, with the contract's names and messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from facility_agent.core.model import Sample
from facility_agent.runtime.state import SiteState

T0 = datetime(2026, 11, 25, 21, 0, 0, 123000, tzinfo=UTC)


def sample(status: str, t: int = 0, **metrics: float) -> Sample:
    m = {k.replace("_", "."): v for k, v in metrics.items()}
    return Sample("ups-a", T0 + timedelta(seconds=t), tuple(status.split()), m)


def types(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.type for e in events]


def test_on_battery_then_on_line() -> None:
    st = SiteState("lab1")
    first = st.apply_sample("nut", sample("OL CHRG", battery_charge=100, battery_runtime=1800))
    assert first.changed and first.events == []
    ob = st.apply_sample("nut", sample("OB DISCHRG", 1, battery_charge=98, battery_runtime=1740))
    assert types(ob.events) == ["power.on_battery"]
    ev = ob.events[0]
    assert ev.severity == "critical"
    assert ev.message == "ups-a is on battery (charge 98%, runtime 29 min)"
    payload = ev.payload()
    assert set(payload) == {"id", "ts", "site", "device", "type", "severity", "message"}
    assert payload["ts"] == "2026-11-25T21:00:01.123Z"
    # The same flags again raise nothing.
    assert st.apply_sample("nut", sample("OB DISCHRG", 2, battery_charge=97)).events == []
    back = st.apply_sample("nut", sample("OL CHRG", 3, battery_charge=97))
    assert types(back.events) == ["power.on_line"]
    assert back.events[0].severity == "info"


def test_low_battery_raised_and_cleared() -> None:
    st = SiteState("lab1")
    st.apply_sample("nut", sample("OB"))
    lb = st.apply_sample("nut", sample("OB LB", 1, battery_charge=15, battery_runtime=90))
    assert types(lb.events) == ["power.low_battery"]
    assert lb.events[0].message == "ups-a reports low battery (charge 15%, runtime 90 s)"
    ok = st.apply_sample("nut", sample("OL CHRG", 2))
    assert types(ok.events) == ["power.battery_ok", "power.on_line"]


def test_first_sample_on_battery_alerts() -> None:
    st = SiteState("lab1")
    assert types(st.apply_sample("nut", sample("OB LB")).events) == [
        "power.on_battery",
        "power.low_battery",
    ]


def test_comm_lost_once_and_restored() -> None:
    st = SiteState("lab1")
    st.apply_sample("nut", sample("OB", battery_charge=50))
    lost = st.apply_lost("ups-a", "nut", "no answer within 1 s", T0)
    assert types(lost.events) == ["device.comm_lost"]
    assert lost.events[0].severity == "critical"  # last known on battery: NUT's dead-UPS rule
    assert "no answer within 1 s" in lost.events[0].message
    assert lost.state.comm == "lost" and lost.state.status == ("OB",)
    assert lost.state.payload("lab1")["comm"] == "lost"
    again = st.apply_lost("ups-a", "nut", "no answer within 1 s", T0)
    assert again.events == [] and not again.changed
    back = st.apply_sample("nut", sample("OB", 5, battery_charge=40))
    assert types(back.events) == ["device.comm_restored"]


def test_lost_before_any_answer_is_a_warning() -> None:
    st = SiteState("lab1")
    lost = st.apply_lost("ups-a", "nut", "connection refused", T0)
    assert types(lost.events) == ["device.comm_lost"] and lost.events[0].severity == "warning"


def test_unchanged_metrics_are_not_a_change() -> None:
    st = SiteState("lab1")
    st.apply_sample("nut", sample("OL", battery_charge=100))
    assert not st.apply_sample("nut", sample("OL", 1, battery_charge=100)).changed
    assert st.apply_sample("nut", sample("OL", 2, battery_charge=99)).changed


def test_event_ids_unique_and_state_payload_shape() -> None:
    st = SiteState("lab1")
    ids = set()
    for i in range(50):
        tr = st.apply_sample("nut", sample("OB" if i % 2 else "OL", i))
        ids.update(e.id for e in tr.events)
    assert len(ids) == 49
    payload = st.apply_sample("nut", sample("OL CHRG", 99, battery_charge=100)).state.payload(
        "lab1"
    )
    assert payload == {
        "ts": "2026-11-25T21:01:39.123Z",
        "site": "lab1",
        "device": "ups-a",
        "driver": "nut",
        "comm": "ok",
        "status": ["OL", "CHRG"],
        "metrics": {"battery.charge": 100},
    }


def test_the_status_flag_rules_are_data_with_the_contracts_types_and_messages() -> None:
    """config/status-flags.yaml: every type is one the contract names; {battery} and metrics
    fill in, a metric the device did not report reads `?`, no battery figure adds nothing."""
    from facility_agent.core.model import EventType
    from facility_agent.runtime.state import STATUS_FLAG_EVENTS

    known = {str(t) for t in EventType}
    assert {r.flag for r in STATUS_FLAG_EVENTS} == {
        "OB",
        "LB",
        "FSD",
        "RB",
        "OVER",
        "BYPASS",
        "OFF",
    }
    for rule in STATUS_FLAG_EVENTS:
        assert rule.type in known and (rule.cleared_type is None or rule.cleared_type in known)
    st = SiteState("lab1")
    st.apply_sample("nut", sample("OL"))
    over = st.apply_sample("nut", sample("OL OVER", 1, ups_load=104))
    assert [e.message for e in over.events] == ["ups-a is overloaded (load 104%)"]
    blind = SiteState("lab1")
    blind.apply_sample("nut", sample("OL"))
    got = blind.apply_sample("nut", sample("OB LB OVER", 1))
    assert [e.message for e in got.events] == [
        "ups-a is on battery",
        "ups-a reports low battery",
        "ups-a is overloaded (load ?%)",
    ]
    cleared = blind.apply_sample("nut", sample("OB", 2, battery_charge=60))
    assert [(e.type, e.severity, e.message) for e in cleared.events] == [
        ("power.battery_ok", "info", "ups-a battery no longer low (charge 60%)")
    ]
