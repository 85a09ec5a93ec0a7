"""The pure hub, two instances wired by a synchronous in-test router: no sockets, no Redis."""

import json
from collections import defaultdict

import pytest

from cloud.signaling import envelopes
from cloud.signaling.deliveries import (
    BROADCAST,
    CLOSE_POLICY,
    CLOSE_REMOVED,
    CLOSE_REPLACED,
    Close,
    Delivery,
    MotionReport,
    PresenceChanged,
    Publish,
    Send,
    Subscribe,
)
from cloud.signaling.hub import Hub
from protocol.messages import IceServer, Message, SessionRequest, Status, decode

ICE = [IceServer(urls=["stun:127.0.0.1:3478"])]


class Cluster:
    """Instances whose Publish deliveries reach whichever instance subscribed the channel."""

    def __init__(self, *names: str) -> None:
        self.hubs = {n: Hub(instance=n, ice_servers=lambda principal: ICE) for n in names}
        self.subs: dict[str, set[str]] = defaultdict(set)
        self.inbox: dict[str, list[Message]] = defaultdict(list)
        self.closed: dict[str, int] = {}
        self.presence: list[tuple[str, bool]] = []
        self.now = 1000.0

    def run(self, name: str, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            match d:
                case Send():
                    self.inbox[d.conn].append(d.message)
                case Close():
                    self.closed[d.conn] = d.code
                case Subscribe():
                    (self.subs[d.channel].add if d.on else self.subs[d.channel].discard)(name)
                case PresenceChanged():
                    self.presence.append((d.device_id, d.online))
                case Publish():
                    receivers = (
                        sorted(self.subs[d.channel])
                        if d.channel != BROADCAST
                        else sorted(self.hubs)
                    )
                    if not receivers:
                        self.run(name, self.hubs[name].unrouted(d))
                    wire = json.loads(json.dumps(envelopes.encode(d.envelope)))  # as the bus
                    for r in receivers:
                        received = envelopes.decode(wire)
                        self.run(r, self.hubs[r].deliver(d.channel, received, self.now))

    def connect(
        self, name: str, conn: str, role: str, principal: str, grant: str | None = None
    ) -> None:
        self.run(name, self.hubs[name].connect(conn, role, principal, grant))  # type: ignore[arg-type]

    def say(self, name: str, conn: str, frame: str, grants: tuple[str, ...] = ()) -> None:
        message = decode(frame)
        hub = self.hubs[name]
        if isinstance(message, SessionRequest):
            self.run(name, hub.request_session(conn, message, self.now, None, grants))
        else:
            self.run(name, hub.receive(conn, message, self.now))

    def types(self, conn: str) -> list[str]:
        return [m.type for m in self.inbox[conn]]

    def last(self, conn: str) -> dict[str, object]:
        return self.inbox[conn][-1].dump()


def open_session(
    c: Cluster,
    viewer_hub: str = "A",
    viewer: str = "v1",
    device: str = "d1",
    grants: tuple[str, ...] = (),
) -> str:
    request = f'{{"type":"session.request","id":"r1","device_id":"{device}"}}'
    c.say(viewer_hub, viewer, request, grants)
    created = c.last(viewer)
    assert created["type"] == "session.created", created
    assert created["id"] == "r1"
    assert created["ice_servers"] == [{"urls": ["stun:127.0.0.1:3478"]}]
    return str(created["session_id"])


def negotiate_across(c: Cluster, viewer_hub: str, camera_hub: str) -> None:
    c.connect(camera_hub, "cam", "device", "d1")
    c.connect(viewer_hub, "v1", "user", "u1")
    sid = open_session(c, viewer_hub)
    c.say(viewer_hub, "v1", f'{{"type":"session.offer","session_id":"{sid}","sdp":"v=0 offer"}}')
    offer = c.last("cam")
    assert offer["type"] == "session.offer"
    assert offer["sdp"] == "v=0 offer"
    assert offer["ice_servers"] == [{"urls": ["stun:127.0.0.1:3478"]}]
    c.say(camera_hub, "cam", f'{{"type":"session.answer","session_id":"{sid}","sdp":"v=0 answer"}}')
    assert c.last("v1") == {"type": "session.answer", "session_id": sid, "sdp": "v=0 answer"}
    cand = (
        '{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}'
    )
    c.say(viewer_hub, "v1", f'{{"type":"session.ice","session_id":"{sid}","candidate":{cand}}}')
    assert c.last("cam")["candidate"]["candidate"].startswith("candidate:1")  # type: ignore[index]
    c.say(camera_hub, "cam", f'{{"type":"session.ice","session_id":"{sid}","candidate":null}}')
    assert c.last("v1") == {"type": "session.ice", "session_id": sid, "candidate": None}
    c.say(viewer_hub, "v1", f'{{"type":"session.end","session_id":"{sid}"}}')
    assert c.last("cam") == {"type": "session.end", "session_id": sid, "reason": "peer_hangup"}
    assert not c.hubs[viewer_hub].viewer_sides
    assert not c.hubs[camera_hub].camera_sides


def test_offer_answer_and_ice_round_trip_on_one_instance() -> None:
    negotiate_across(Cluster("A"), "A", "A")


def test_offer_answer_and_ice_round_trip_across_instances() -> None:
    negotiate_across(Cluster("A", "B"), "A", "B")


def test_requesting_an_offline_camera_ends_with_device_offline() -> None:
    c = Cluster("A", "B")
    c.connect("A", "v1", "user", "u1")
    c.say("A", "v1", '{"type":"session.request","id":"r9","device_id":"nobody"}')
    assert c.last("v1")["type"] == "session.end"
    assert c.last("v1")["reason"] == "device_offline"


def test_an_eleventh_viewer_is_refused_with_resource_exhausted() -> None:
    c = Cluster("A", "B")
    c.connect("B", "cam", "device", "d1")
    for i in range(10):
        c.connect("A", f"v{i}", "user", f"u{i}")
        open_session(c, "A", f"v{i}")
    c.connect("A", "v10", "user", "u10")
    c.say("A", "v10", '{"type":"session.request","device_id":"d1"}')
    assert c.last("v10")["reason"] == "resource_exhausted"


def test_the_camera_dropping_mid_session_ends_it_with_device_offline() -> None:
    c = Cluster("A", "B")
    c.connect("B", "cam", "device", "d1")
    c.connect("A", "v1", "user", "u1")
    sid = open_session(c)
    c.run("B", c.hubs["B"].disconnect("cam"))
    assert c.last("v1") == {"type": "session.end", "session_id": sid, "reason": "device_offline"}
    assert c.presence == [("d1", True), ("d1", False)]


def test_a_camera_instance_dying_ends_sessions_when_its_presence_expires() -> None:
    c = Cluster("A", "B")
    c.connect("B", "cam", "device", "d1")
    c.connect("A", "v1", "user", "u1")
    sid = open_session(c)
    c.run("A", [Publish(BROADCAST, envelopes.Gone("d1"))])
    assert c.last("v1") == {"type": "session.end", "session_id": sid, "reason": "device_offline"}


def test_an_unanswered_offer_times_out_on_both_sides() -> None:
    c = Cluster("A", "B")
    c.connect("B", "cam", "device", "d1")
    c.connect("A", "v1", "user", "u1")
    sid = open_session(c)
    c.say("A", "v1", f'{{"type":"session.offer","session_id":"{sid}","sdp":"v=0"}}')
    c.now += 16
    c.run("A", c.hubs["A"].tick(c.now))
    assert c.last("v1")["reason"] == "timeout"
    assert c.last("cam") == {"type": "session.end", "session_id": sid, "reason": "timeout"}


BINDING, SHARE = "bind:d1:k1", "share:s1"


def access_change(grants: list[str], reason: str, change_id: str = "c1") -> Publish:
    return Publish(BROADCAST, envelopes.Access(change_id, "d1", tuple(grants), reason))


def test_revoking_a_share_ends_only_the_sessions_resting_on_it() -> None:
    c = Cluster("A", "B")
    c.connect("B", "cam", "device", "d1", BINDING)
    c.connect("A", "friend", "user", "u-friend")
    c.connect("B", "owner", "user", "u-owner")
    friend_sid = open_session(c, "A", "friend", grants=(BINDING, SHARE))
    owner_sid = open_session(c, "B", "owner", grants=(BINDING,))
    c.run("B", [access_change([SHARE], "access_revoked")])
    assert c.last("friend") == {
        "type": "session.end",
        "session_id": friend_sid,
        "reason": "access_revoked",
    }
    assert c.last("cam") == {
        "type": "session.end",
        "session_id": friend_sid,
        "reason": "access_revoked",
    }
    assert owner_sid in c.hubs["B"].viewer_sides
    # The friend can no longer steer the ended session.
    c.say(
        "A",
        "friend",
        f'{{"type":"session.offer","id":"x","session_id":"{friend_sid}","sdp":"v=0"}}',
    )
    assert c.last("friend")["error"]["code"] == "unknown_session"  # type: ignore[index]


def test_a_revoked_grant_is_refused_even_when_the_check_read_the_database_before_it() -> None:
    c = Cluster("A", "B")
    c.connect("B", "cam", "device", "d1", BINDING)
    c.connect("A", "friend", "user", "u-friend")
    c.run("A", [access_change([SHARE], "access_revoked")])
    # A request authorised under the share just before the change was recorded.
    c.say("A", "friend", '{"type":"session.request","id":"r","device_id":"d1"}', (BINDING, SHARE))
    assert c.last("friend")["error"]["code"] == "device_not_found"  # type: ignore[index]
    assert not c.hubs["A"].viewer_sides
    # Shared again: a new share is a new grant.
    open_session(c, "A", "friend", grants=(BINDING, "share:s2"))


def test_a_session_opened_on_one_instance_is_refused_by_a_camera_instance_that_knows() -> None:
    c = Cluster("A", "B")
    c.connect("B", "cam", "device", "d1", BINDING)
    c.connect("A", "friend", "user", "u-friend")
    c.run("B", c.hubs["B"].access_changed("c1", "d1", (SHARE,), "access_revoked", c.now))
    c.say("A", "friend", '{"type":"session.request","id":"r","device_id":"d1"}', (BINDING, SHARE))
    assert c.last("friend")["reason"] == "access_revoked"
    assert not c.hubs["B"].camera_sides


def test_an_access_change_heard_twice_is_applied_once() -> None:
    c = Cluster("A")
    c.connect("A", "cam", "device", "d1", BINDING)
    c.connect("A", "friend", "user", "u-friend")
    c.run("A", [access_change([SHARE], "access_revoked")])
    sid = open_session(c, "A", "friend", grants=(BINDING, "share:s2"))
    c.run("A", [access_change([SHARE], "access_revoked")])  # the database record, later
    assert sid in c.hubs["A"].viewer_sides
    # Revoked grants are forgotten after a while, with the changes that revoked them.
    c.now += 601
    c.run("A", c.hubs["A"].tick(c.now))
    assert not c.hubs["A"].revocations.grants
    assert not c.hubs["A"].revocations.changes


def test_removing_a_device_ends_every_session_and_closes_the_camera() -> None:
    c = Cluster("A", "B")
    c.connect("B", "cam", "device", "d1", BINDING)
    c.connect("A", "v1", "user", "u1")
    sid = open_session(c, grants=(BINDING,))
    c.run("A", [access_change([BINDING], "device_removed")])
    assert c.last("v1") == {"type": "session.end", "session_id": sid, "reason": "device_removed"}
    assert c.closed["cam"] == CLOSE_REMOVED
    assert "d1" not in c.hubs["B"].cameras
    assert c.presence[-1] == ("d1", False)
    # The removed key cannot come back, even before the device is gone from the database;
    # the camera re-onboarded with a new key can.
    c.connect("A", "cam-again", "device", "d1", BINDING)
    assert c.closed["cam-again"] == CLOSE_REMOVED
    assert "cam-again" not in c.hubs["A"].connections
    c.connect("A", "cam-new-key", "device", "d1", "bind:d1:k2")
    assert c.hubs["A"].cameras["d1"] == "cam-new-key"


def test_a_reconnecting_camera_replaces_its_old_connection_on_another_instance() -> None:
    c = Cluster("A", "B")
    c.connect("A", "cam-old", "device", "d1")
    c.connect("A", "v1", "user", "u1")
    open_session(c, "A")
    c.connect("B", "cam-new", "device", "d1")
    assert c.types("cam-old")[-1] == "go_away"
    assert c.closed["cam-old"] == CLOSE_REPLACED
    assert c.last("v1")["reason"] == "device_offline"
    assert c.subs["dev.d1"] == {"B"}
    c.say("A", "v1", '{"type":"session.request","id":"again","device_id":"d1"}')
    assert c.last("v1")["type"] == "session.created"


def test_only_a_sessions_own_parties_can_steer_it() -> None:
    c = Cluster("A")
    c.connect("A", "cam", "device", "d1")
    c.connect("A", "cam2", "device", "d2")
    c.connect("A", "v1", "user", "u1")
    c.connect("A", "intruder", "user", "u2")
    sid = open_session(c)
    c.say("A", "intruder", f'{{"type":"session.offer","id":"i","session_id":"{sid}","sdp":"evil"}}')
    c.say("A", "cam2", f'{{"type":"session.answer","id":"j","session_id":"{sid}","sdp":"evil"}}')
    assert c.last("intruder")["error"]["code"] == "unknown_session"  # type: ignore[index]
    assert c.last("cam2")["error"]["code"] == "unknown_session"  # type: ignore[index]
    assert all(m.type == "session.created" for m in c.inbox["v1"])
    assert "cam" not in c.inbox


def test_sdp_and_ice_floods_are_limited_and_persistent_abuse_closes() -> None:
    c = Cluster("A")
    c.connect("A", "cam", "device", "d1")
    c.connect("A", "v1", "user", "u1")
    sid = open_session(c)
    for _ in range(5):
        c.say("A", "v1", f'{{"type":"session.offer","session_id":"{sid}","sdp":"v=0"}}')
    c.say("A", "v1", f'{{"type":"session.offer","id":"6th","session_id":"{sid}","sdp":"v=0"}}')
    assert c.last("v1")["error"]["code"] == "rate_limited"  # type: ignore[index]
    c.now += 1.0
    c.say("A", "v1", f'{{"type":"session.offer","session_id":"{sid}","sdp":"v=0"}}')
    assert c.last("cam")["type"] == "session.offer"
    ice = f'{{"type":"session.ice","session_id":"{sid}","candidate":null}}'
    for _ in range(20):
        c.say("A", "v1", ice)
    c.say("A", "v1", ice)
    assert c.last("v1")["error"]["code"] == "rate_limited"  # type: ignore[index]
    for _ in range(30):
        c.say("A", "v1", ice)
    assert c.closed["v1"] == CLOSE_POLICY


def test_shutdown_tells_everyone_to_go_away() -> None:
    c = Cluster("A", "B")
    c.connect("B", "cam", "device", "d1")
    c.connect("A", "v1", "user", "u1")
    sid = open_session(c)
    c.run("A", c.hubs["A"].drain())
    assert c.types("v1")[-2:] == ["go_away", "session.end"]
    assert c.last("cam") == {"type": "session.end", "session_id": sid, "reason": "server_shutdown"}
    assert c.closed["v1"] == 1001


def test_channels_are_held_exactly_while_someone_local_needs_them() -> None:
    c = Cluster("A")
    c.connect("A", "v1", "user", "u1")
    c.connect("A", "v2", "user", "u1")
    c.connect("A", "cam", "device", "d1")
    assert {ch for ch, holders in c.subs.items() if holders} == {
        "user.u1",
        "conn.v1",
        "conn.v2",
        "dev.d1",
    }
    c.run("A", c.hubs["A"].disconnect("v1"))
    assert c.subs["user.u1"] == {"A"}
    c.run("A", c.hubs["A"].disconnect("v2"))
    c.run("A", c.hubs["A"].disconnect("cam"))
    assert {ch for ch, holders in c.subs.items() if holders} == set()


def test_every_user_connection_waits_for_its_users_channel_not_only_the_first() -> None:
    hub = Hub(instance="A", ice_servers=lambda principal: ICE)
    for conn in ("v1", "v2"):
        assert Subscribe("user.u1") in hub.connect(conn, "user", "u1")
    assert Subscribe("user.u1", on=False) not in hub.disconnect("v1")
    assert Subscribe("user.u1", on=False) in hub.disconnect("v2")


def test_pushes_reach_every_connection_of_the_addressed_user_only() -> None:
    c = Cluster("A", "B")
    c.connect("A", "phone", "user", "u1")
    c.connect("B", "laptop", "user", "u1")
    c.connect("A", "other", "user", "u2")
    push = {"type": "device.presence", "device_id": "d1", "online": True, "last_seen": None}
    c.run("A", [Publish("user.u1", envelopes.Push(push))])
    assert c.inbox["phone"] == [push]
    assert c.inbox["laptop"] == [push]
    assert c.inbox["other"] == []


def relayed(c: Cluster) -> tuple[str, str]:
    """Viewer v1 on A watches d1 (camera on B) through relay r1 (connected on B)."""
    c.connect("B", "cam", "device", "d1", BINDING)
    c.connect("B", "relay", "relay", "r1")
    c.connect("A", "v1", "user", "u1")
    request = decode('{"type":"session.request","id":"r","device_id":"d1","mode":"relay"}')
    assert isinstance(request, SessionRequest)
    hub = c.hubs["A"]
    c.run("A", hub.request_session("v1", request, c.now, ("r1", "relay"), (BINDING, SHARE)))
    created = c.last("v1")
    assert (created["type"], created["route"]) == ("session.created", "relay")
    down = str(created["session_id"])
    assert c.last("relay") == {"type": "relay.session", "session_id": down, "device_id": "d1"}
    # The relay watches the camera itself, allowed because it serves a viewer of d1.
    # It watches under the camera's binding only, never under the viewer's share.
    assert c.hubs["B"].relay_serves("relay", "d1") == (BINDING,)
    assert c.hubs["B"].relay_serves("relay", "d2") is None
    c.say("B", "relay", '{"type":"session.request","id":"up","device_id":"d1"}', (BINDING,))
    up = str(c.last("relay")["session_id"])
    c.say("B", "relay", f'{{"type":"session.offer","session_id":"{up}","sdp":"v=0 relay"}}')
    assert c.last("cam")["sdp"] == "v=0 relay"
    c.say("B", "cam", f'{{"type":"session.answer","session_id":"{up}","sdp":"v=0 cam"}}')
    assert c.last("relay") == {"type": "session.answer", "session_id": up, "sdp": "v=0 cam"}
    # Downstream: the viewer's offer reaches the relay, which answers like a camera.
    c.say("A", "v1", f'{{"type":"session.offer","session_id":"{down}","sdp":"v=0 viewer"}}')
    assert c.last("relay")["type"] == "session.offer"
    assert c.last("relay")["session_id"] == down
    c.say("B", "relay", f'{{"type":"session.answer","session_id":"{down}","sdp":"v=0 fan"}}')
    assert c.last("v1") == {"type": "session.answer", "session_id": down, "sdp": "v=0 fan"}
    return down, up


def test_a_relayed_session_reaches_the_relay_which_watches_the_camera_itself() -> None:
    c = Cluster("A", "B")
    down, up = relayed(c)
    c.say("A", "v1", f'{{"type":"session.ice","session_id":"{down}","candidate":null}}')
    assert c.last("relay") == {"type": "session.ice", "session_id": down, "candidate": None}
    # The camera only ever hears of the relay's own session, never of the viewer's.
    assert {m.dump().get("session_id") for m in c.inbox["cam"] if isinstance(m, Message)} == {up}


def test_a_relay_dropping_ends_its_viewers_sessions_with_relay_failed() -> None:
    c = Cluster("A", "B")
    down, up = relayed(c)
    c.run("B", c.hubs["B"].disconnect("relay"))
    assert c.last("v1") == {"type": "session.end", "session_id": down, "reason": "relay_failed"}
    assert c.last("cam") == {"type": "session.end", "session_id": up, "reason": "peer_hangup"}
    assert ("relay:r1", False) in c.presence


def test_a_relays_instance_dying_ends_relayed_sessions_elsewhere() -> None:
    c = Cluster("A", "B")
    down, _ = relayed(c)
    c.run("A", [Publish(BROADCAST, envelopes.Gone("relay:r1"))])
    assert c.last("v1") == {"type": "session.end", "session_id": down, "reason": "relay_failed"}


def test_revoking_access_ends_a_relayed_session_at_the_relay_too() -> None:
    c = Cluster("A", "B")
    down, _ = relayed(c)
    c.run("A", [access_change([SHARE], "access_revoked")])
    assert c.last("v1")["reason"] == "access_revoked"
    assert c.last("relay") == {
        "type": "session.end",
        "session_id": down,
        "reason": "access_revoked",
    }
    assert not c.hubs["B"].relay_serves("relay", "d1")


def test_removing_a_relayed_device_ends_the_relays_own_session_with_the_camera() -> None:
    c = Cluster("A", "B")
    down, up = relayed(c)
    c.run("A", [access_change([BINDING], "device_removed")])
    assert c.last("v1") == {"type": "session.end", "session_id": down, "reason": "device_removed"}
    assert {"type": "session.end", "session_id": up, "reason": "device_removed"} in [
        m.dump() for m in c.inbox["relay"] if isinstance(m, Message)
    ]
    assert c.closed["cam"] == CLOSE_REMOVED


def test_a_relay_that_is_gone_before_the_session_opens_means_relay_failed() -> None:
    c = Cluster("A", "B")
    c.connect("A", "v1", "user", "u1")
    request = decode('{"type":"session.request","id":"r","device_id":"d1","mode":"relay"}')
    assert isinstance(request, SessionRequest)
    c.run("A", c.hubs["A"].request_session("v1", request, c.now, relay=("r9", "nobody")))
    assert c.last("v1") == {
        "type": "session.end",
        "id": "r",
        "session_id": c.last("v1")["session_id"],
        "reason": "relay_failed",
    }


def test_a_camera_reports_its_own_motion_and_nobody_else_can() -> None:
    hub = Hub(instance="A", ice_servers=lambda principal: ICE)
    hub.connect("c1", "device", "d1", "bind:d1:k")
    hub.connect("v1", "user", "u1")
    motion = '{"type": "device.motion", "id": "m1", "active": true}'
    out = hub.receive("c1", decode(motion), 1000.0)
    assert out == [MotionReport("d1", True), Send("c1", Status(id="m1", ok=True))]
    refused = hub.receive("v1", decode(motion), 1000.0)
    assert [d for d in refused if isinstance(d, MotionReport)] == []
    assert isinstance(refused[0], Send)
    assert refused[0].message.dump()["error"]["code"] == "invalid_request"


def test_a_camera_flooding_motion_reports_is_limited() -> None:
    hub = Hub(instance="A", ice_servers=lambda principal: ICE)
    hub.connect("c1", "device", "d1", "bind:d1:k")
    frame = decode('{"type": "device.motion", "active": false}')
    reports = [hub.receive("c1", frame, 1000.0) for _ in range(5)]
    recorded = sum(isinstance(d, MotionReport) for out in reports for d in out)
    assert recorded == 2  # the bucket's burst; the rest are answered rate_limited
    assert reports[-1][0].message.dump()["error"]["code"] == "rate_limited"  # type: ignore[union-attr]


def test_every_envelope_crosses_the_bus_as_itself_and_strangers_are_refused() -> None:
    sent = [
        envelopes.Open("s1", "c1", "u1", "d1", ("bind:d1:k", "share:x")),
        envelopes.Accepted("s1"),
        envelopes.Offer("s1", "v=0"),
        envelopes.Answer("s1", "v=0"),
        envelopes.Ice("s1", {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}),
        envelopes.Ice("s1", None),
        envelopes.End("s1", "peer_hangup"),
        envelopes.Takeover("c2"),
        envelopes.Snapshot("r1", "d1"),
        envelopes.Push({"type": "device.presence", "device_id": "d1", "online": True}),
        envelopes.Access("a1", "", ("signin:f1",), "signed_out"),
        envelopes.Gone("relay:r1"),
    ]
    assert {type(e) for e in sent} == set(envelopes.KINDS.values())
    for envelope in sent:
        assert envelopes.decode(json.loads(json.dumps(envelopes.encode(envelope)))) == envelope
    newer = {"kind": "gone", "device": "d1", "since": 3}  # a field a newer instance added
    assert envelopes.decode(newer) == envelopes.Gone("d1")
    for wire in ({"kind": "teleport"}, {"kind": "end", "session": "s1"}, {"session": "s1"}):
        with pytest.raises(envelopes.BadEnvelope):
            envelopes.decode(wire)
