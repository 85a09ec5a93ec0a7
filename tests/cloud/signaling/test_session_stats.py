"""``session.stats`` in the pure hub: each side's report becomes a :class:`StatsReport` for
the session's record; only a participant may report, with the route the cloud chose, at a
limited rate; anything else gets a ``status`` error."""

import json
from typing import Any

from cloud.signaling.deliveries import Delivery, Record, StatsReport
from cloud.signaling.hub import Hub
from cloud.signaling.sessions import Limits
from protocol.messages import SessionStats, decode
from tests.cloud.signaling.test_hub import ICE, Cluster, open_session, relayed


class Recording(Cluster):
    """The in-test cluster, also keeping the records and stats reports the edges would store."""

    def __init__(self, *names: str) -> None:
        super().__init__(*names)
        self.records: list[Record] = []
        self.reports: list[StatsReport] = []

    def run(self, name: str, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            if isinstance(d, Record):
                self.records.append(d)
            elif isinstance(d, StatsReport):
                self.reports.append(d)
        super().run(name, deliveries)


def stats(session_id: str, **fields: Any) -> str:
    message = {
        "type": "session.stats",
        "session_id": session_id,
        "route": "p2p",
        "local_candidate_type": "host",
        "remote_candidate_type": "host",
        "protocol": "udp",
        "ice_ms": 40,
        **fields,
    }
    return json.dumps({k: v for k, v in message.items() if v is not None})


def error(c: Cluster, conn: str) -> tuple[str, str]:
    status = c.last(conn)
    assert status["type"] == "status", status
    assert status["ok"] is False
    detail: dict[str, str] = status["error"]  # type: ignore[assignment]
    return detail["code"], detail["message"]


def watching(c: Recording, viewer_hub: str = "A", camera_hub: str = "B") -> str:
    c.connect(camera_hub, "cam", "device", "d1")
    c.connect(viewer_hub, "v1", "user", "u1")
    return open_session(c, viewer_hub)


def test_both_sides_report_each_into_its_own_field_across_instances() -> None:
    c = Recording("A", "B")
    sid = watching(c)
    c.say("A", "v1", stats(sid, route="turn", local_candidate_type="relay", ttff_ms=700))
    c.say("B", "cam", stats(sid, route="turn", remote_candidate_type="relay"))
    viewer, camera = c.reports
    assert (viewer.session_id, viewer.side) == (sid, "viewer")
    assert viewer.stats.ttff_ms == 700
    assert viewer.stats.local_candidate_type == "relay"
    assert (camera.session_id, camera.side) == (sid, "camera")
    assert camera.stats == SessionStats.model_validate_json(
        stats(sid, route="turn", remote_candidate_type="relay")
    )
    # Nothing is sent back on success, and nothing reaches the other side.
    assert c.types("v1") == ["session.created"]
    assert c.types("cam") == []
    # A later report of the same side is taken too (it replaces the earlier one).
    c.say("A", "v1", stats(sid, ice_ms=90))
    assert len(c.reports) == 3


def test_only_a_participant_may_report_and_an_unknown_session_is_an_error() -> None:
    c = Recording("A", "B")
    sid = watching(c)
    c.connect("A", "v2", "user", "u2")  # another viewer, of another session
    c.connect("B", "cam2", "device", "d2")  # another camera
    c.connect("A", "v3", "user", "u1")  # the same user on another connection
    for hub, conn in [("A", "v2"), ("B", "cam2"), ("A", "v3")]:
        c.say(hub, conn, stats(sid, id="q"))
        assert error(c, conn) == ("unknown_session", "no such session")
        assert c.last(conn)["id"] == "q"
    c.say("A", "v1", stats("nope"))
    assert error(c, "v1") == ("unknown_session", "no such session")
    c.say("A", "v1", f'{{"type":"session.end","session_id":"{sid}"}}')
    c.say("A", "v1", stats(sid))  # over: the session is no longer known
    assert error(c, "v1")[0] == "unknown_session"
    assert c.reports == []


def test_the_route_must_be_the_one_the_cloud_chose() -> None:
    c = Recording("A", "B")
    sid = watching(c)
    c.say("A", "v1", stats(sid, route="relay"))
    code, message = error(c, "v1")
    assert code == "invalid_request"
    assert "does not go through a relay node" in message
    c.say("B", "cam", stats(sid, route="relay"))
    assert error(c, "cam")[0] == "invalid_request"
    assert c.reports == []


def test_ttff_is_the_viewers_alone() -> None:
    c = Recording("A", "B")
    sid = watching(c)
    c.say("B", "cam", stats(sid, ttff_ms=300))
    code, message = error(c, "cam")
    assert code == "invalid_request"
    assert "ttff_ms" in message
    assert c.reports == []


def test_a_relayed_session_is_reported_with_route_relay_and_the_relays_own_is_marked() -> None:
    c = Recording("A", "B")
    down, up = relayed(c)
    # The viewer of a session through a relay node says so; p2p is refused.
    c.say("A", "v1", stats(down))
    assert error(c, "v1")[0] == "invalid_request"
    c.say("A", "v1", stats(down, route="relay", ttff_ms=900))
    # The relay plays the camera's part towards the viewer, and the viewer's towards the
    # camera: its reports land on the matching side of each session.
    c.say("B", "relay", stats(down, route="relay"))
    c.say("B", "relay", stats(up))
    c.say("B", "cam", stats(up))
    assert [(r.session_id, r.side) for r in c.reports] == [
        (down, "viewer"),
        (down, "camera"),
        (up, "viewer"),
        (up, "camera"),
    ]
    created = {r.session_id: r for r in c.records if r.event == "created"}
    assert (created[down].route, created[down].viewer_role) == ("relay", "user")
    assert (created[up].route, created[up].viewer_role) == ("p2p", "relay")


def test_reports_are_rate_limited_per_connection() -> None:
    c = Recording("A", "B")
    sid = watching(c)
    for _ in range(2):
        c.say("A", "v1", stats(sid))
    c.say("A", "v1", stats(sid, id="third"))
    code, message = error(c, "v1")
    assert code == "rate_limited"
    assert "session.stats" in message
    assert c.last("v1")["id"] == "third"
    assert len(c.reports) == 2
    c.now += 1.0  # the bucket refills
    c.say("A", "v1", stats(sid))
    assert len(c.reports) == 3


def test_the_limit_is_configurable() -> None:
    hub = Hub(instance="A", ice_servers=lambda principal: ICE, limits=Limits(stats_per_s=5))
    hub.connect("v1", "user", "u1")
    frame = decode(stats("nope"))
    replies = [hub.receive("v1", frame, 100.0) for _ in range(6)]
    codes = [r[0].message.error.code for r in replies]  # type: ignore[union-attr]
    assert codes == ["unknown_session"] * 5 + ["rate_limited"]
