"""Resync after a bus gap, driven through the pure hub of two in-test instances."""

from cloud.signaling.deliveries import CLOSE_RESYNC, Close, Send
from tests.cloud.signaling.test_hub import Cluster, open_session


def test_a_bus_gap_closes_the_user_connections_it_names_and_leaves_cameras_and_relays() -> None:
    c = Cluster("A")
    c.connect("A", "cam", "device", "d1")
    c.connect("A", "relay", "relay", "r1")
    c.connect("A", "v1", "user", "u1")
    c.connect("A", "v2", "user", "u1")  # came after the gap began: not named
    out = c.hubs["A"].resync(["cam", "relay", "v1", "gone"])
    c.run("A", out)
    go_away = c.last("v1")
    assert go_away["type"] == "go_away"
    assert go_away["reason"] == "resync"
    assert c.closed == {"v1": CLOSE_RESYNC}
    assert [d for d in out if isinstance(d, Send | Close) and d.conn != "v1"] == []


def test_after_a_bus_gap_a_camera_hangs_up_its_sessions_with_viewers_elsewhere() -> None:
    """Their viewers' ends may have crossed the bus in the gap: unheard, each would keep one
    of the camera's viewer places for good. Sessions with a viewer here, and those opened
    after the gap began, stay."""
    c = Cluster("A", "B")
    c.connect("B", "cam", "device", "d1")
    c.connect("A", "v1", "user", "u1")
    c.connect("B", "v2", "user", "u1")
    remote = open_session(c, "A", "v1")
    local = open_session(c, "B", "v2")
    lost_at = c.now + 1
    c.now += 2
    late = open_session(c, "A", "v1")
    c.run("B", c.hubs["B"].orphans(lost_at))
    ended = [m for m in c.inbox["cam"] if m.type == "session.end"]
    assert [(m.session_id, m.reason) for m in ended] == [(remote, "resync")]  # type: ignore[attr-defined]
    assert c.last("v1") == {"type": "session.end", "session_id": remote, "reason": "resync"}
    assert set(c.hubs["B"].camera_sides) == {local, late}
