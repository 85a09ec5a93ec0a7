"""Full trickle: a browser's offer leaves before gathering and every candidate follows in a
``session.ice`` right behind it, so the camera agent and the relay node get candidates of
sessions whose offer they have not applied yet, or not even seen. None may be lost: an
mDNS candidate dropped before the offer, then the end of candidates applied after it,
leaves aioice with nothing to check, and ICE fails before the browser's first check."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioice.ice
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sim.camera import Camera
from device_sim.camera_peer import CameraPeer
from device_sim.media import SyntheticVideo
from device_sim.state import CameraState
from device_sim.viewer_peer import ViewerPeer
from peer import codecs
from peer.ice import MAX_PENDING_CANDIDATES, EarlyCandidates, RemoteCandidates
from peer.network import use_host_addresses
from protocol.messages import (
    Message,
    RelaySession,
    SessionAnswer,
    SessionIce,
    SessionOffer,
    SessionRequest,
)
from relay.node import RelayNode
from relay.settings import RelaySettings

HOST = "candidate:1 1 udp 2122260223 192.0.2.9 50000 typ host"  # nobody answers there


def mdns(host_line: str) -> str:
    """A stock browser's form of a host candidate: the address behind an mDNS name."""
    bits = host_line.split(" ")
    bits[4] = f"{uuid.uuid4()}.local"
    return " ".join(bits)


def trickled(line: str) -> dict[str, Any]:
    return {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}


def ice(session_id: str, candidate: dict[str, Any] | None) -> SessionIce:
    return SessionIce.model_validate({"session_id": session_id, "candidate": candidate})


def without_candidates(sdp: str) -> tuple[str, list[str]]:
    """A full-trickle offer: the SDP without its candidates, and its host candidate lines."""
    kept, found = [], []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            found.append(line.removeprefix("a="))
        elif line != "a=end-of-candidates":
            kept.append(line)
    return "\r\n".join(kept), [c for c in found if " typ host" in c]


class Outbox:
    """Stands in for a SignalingClient's send: keeps what the peer sends to the cloud."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.changed = asyncio.Event()

    async def send(self, message: Message) -> bool:
        self.sent.append(message)
        self.changed.set()
        return True

    async def first(self, kind: type[Message], timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                found = [m for m in self.sent if isinstance(m, kind)]
                if found:
                    return found[0]
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture(scope="module", autouse=True)
def loopback_host_candidates() -> Iterator[None]:
    original = aioice.ice.get_host_addresses
    use_host_addresses(["127.0.0.1"])
    yield
    aioice.ice.get_host_addresses = original


@pytest.fixture
async def viewer() -> AsyncIterator[ViewerPeer]:
    peer = ViewerPeer([])
    yield peer
    await peer.close()


@pytest.fixture
async def camera() -> AsyncIterator[tuple[Camera, Outbox]]:
    key = Ed25519PrivateKey.generate()
    state = CameraState(
        cloud_url="http://127.0.0.1:9",
        device_id="dev-trickle-0001",
        device_uid="CAM-TRICKLE",
        device_name="Trickle",
        camera_model="SIM-1",
        firmware_version="1.0.0",
        signaling_url="ws://127.0.0.1:9/ws/v1/device",
        private_key=CameraState.encode_key(key),
    )
    agent = Camera(state, SyntheticVideo(320, 240, fps=15))
    outbox = Outbox()
    agent.signaling.send = outbox.send  # type: ignore[method-assign]
    yield agent, outbox
    await agent._close_peers()


# EarlyCandidates ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_early_candidates_are_kept_per_session_in_order_and_taken_once() -> None:
    early = EarlyCandidates("test")
    first, second = trickled(mdns(HOST)), trickled(HOST)

    assert early.hold("a", first)
    assert early.hold("b", second)
    assert early.hold("a", second)
    assert early.hold("a", None)

    assert early.take("a") == [first, second, None]
    assert early.take("a") == []
    assert len(early) == 1
    early.discard("b")
    assert early.take("b") == []
    with pytest.raises(ValueError, match="malformed"):
        early.hold("c", trickled("candidate:1 1 udp"))
    assert len(early) == 0


def test_early_candidates_are_bounded_per_session_in_sessions_and_in_time() -> None:
    clock = Clock()
    early = EarlyCandidates("test", max_sessions=2, max_per_session=3, ttl_s=30, clock=clock)

    assert [early.hold("a", trickled(HOST)) for _ in range(4)] == [True, True, True, False]
    assert early.hold("b", None)
    assert not early.hold("c", None)  # a third session waits for nothing
    clock.now += 20
    assert early.hold("b", trickled(HOST))  # the session's clock runs from its first
    clock.now += 10
    assert len(early) == 0  # both are 30 s old: forgotten
    assert early.hold("c", None)
    assert early.take("a") == []
    assert early.take("c") == [None]
    assert EarlyCandidates().max_per_session == MAX_PENDING_CANDIDATES


# RemoteCandidates ----------------------------------------------------------------------------


class SlowConnection:
    """An RTCPeerConnection stand-in whose addIceCandidate suspends (as a resolving one may):
    records what reaches it, in order."""

    def __init__(self) -> None:
        self.added: list[str | None] = []
        self.described = False

    async def setRemoteDescription(self, description: Any) -> None:
        await asyncio.sleep(0)
        self.described = True

    async def addIceCandidate(self, candidate: Any) -> None:
        assert self.described, "a candidate reached aiortc before the description"
        await asyncio.sleep(0.01)
        self.added.append(None if candidate is None else candidate.ip)


async def test_candidates_added_while_held_ones_are_handed_over_keep_their_order() -> None:
    remote = RemoteCandidates("test")
    pc = SlowConnection()
    await remote.add(trickled(HOST))
    await remote.add(trickled(HOST.replace("192.0.2.9", "192.0.2.10")))

    described = asyncio.create_task(remote.set_description(pc, "v=0\r\n", "offer"))  # type: ignore[arg-type]
    while not pc.described:
        await asyncio.sleep(0)
    await remote.add(trickled(HOST.replace("192.0.2.9", "192.0.2.11")))  # meanwhile
    await remote.add(None)
    await described
    await remote.add(trickled(HOST.replace("192.0.2.9", "192.0.2.12")))  # after: at once

    # aioice refuses every candidate after the end of candidates: the end comes last
    assert pc.added == ["192.0.2.9", "192.0.2.10", "192.0.2.11", None, "192.0.2.12"]


# the camera agent ----------------------------------------------------------------------------


async def test_the_camera_keeps_candidates_trickled_before_and_right_behind_the_offer(
    camera: tuple[Camera, Outbox], viewer: ViewerPeer
) -> None:
    agent, outbox = camera
    session = "s-trickle-before"
    offer, hosts = without_candidates(await viewer.offer())
    assert hosts
    extra = [trickled(mdns(HOST)), trickled(HOST)]

    # one before the offer, the rest right behind it, before the camera's task has run
    await agent._handle(ice(session, extra[0]))
    await agent._handle(SessionOffer(session_id=session, sdp=offer, ice_servers=[]))
    for candidate in [extra[1], *(trickled(h) for h in hosts)]:
        await agent._handle(ice(session, candidate))
    answer = await outbox.first(SessionAnswer)
    peer: CameraPeer = agent._peers[session]

    ices = [t.receiver.transport.transport for t in peer._pc.getTransceivers()]
    addresses = {c.ip for t in ices for c in t.getRemoteCandidates()}
    assert addresses == {"192.0.2.9", "127.0.0.1"}  # both host candidates reached aiortc
    assert peer._remote.hidden == 1  # the mDNS one was seen, and kept from aioice
    await viewer.accept(answer.sdp)
    await viewer.first_frame(timeout=10)
    assert await peer.wait_connected()


async def test_a_browser_with_only_mdns_candidates_trickled_behind_its_offer_connects(
    camera: tuple[Camera, Outbox], viewer: ViewerPeer
) -> None:
    """The hazard itself: the mDNS candidate arrives before the camera made the session's
    peer, the end of candidates after. Dropping the first would pass the end to aioice with
    no candidate at all, and the camera's ICE would fail before the viewer's checks came."""
    agent, outbox = camera
    session = "s-trickle-mdns"
    offer, hosts = without_candidates(await viewer.offer())

    await agent._handle(SessionOffer(session_id=session, sdp=offer, ice_servers=[]))
    for host in hosts:
        await agent._handle(ice(session, trickled(mdns(host))))
    answer = await outbox.first(SessionAnswer)  # the camera has applied the offer by now
    await agent._handle(ice(session, None))
    peer: CameraPeer = agent._peers[session]
    assert peer._remote.hidden == len(hosts)

    await viewer.accept(answer.sdp)
    await viewer.first_frame(timeout=10)
    assert await peer.wait_connected()
    pair = peer.selected_pair()
    assert pair is not None
    assert pair["remote"]["type"] == "prflx"  # learned from the viewer's checks
    assert peer.ended is None


# the relay node ------------------------------------------------------------------------------


@pytest.fixture
async def relay() -> AsyncIterator[tuple[RelayNode, Outbox]]:
    node = RelayNode(RelaySettings("http://127.0.0.1:9", "relay-trickle", "secret"))

    async def no_analysis(device: str, fanout: object, armed: object) -> None:
        """No cloud to fetch a camera's motion settings from here."""

    node.analysis.watch = no_analysis  # type: ignore[method-assign]
    outbox = Outbox()
    node.signaling.send = outbox.send  # type: ignore[method-assign]
    yield node, outbox
    await node._close_all()


async def test_the_relay_keeps_a_viewers_candidates_until_it_applies_the_offer(
    relay: tuple[RelayNode, Outbox], viewer: ViewerPeer
) -> None:
    node, outbox = relay
    session, device = "s-relayed", "dev-relayed"
    offer, hosts = without_candidates(await viewer.offer())

    # before the cloud's relay.session (a safety net), and before the offer
    await node._dispatch(ice(session, trickled(HOST)))
    await node._dispatch(RelaySession(session_id=session, device_id=device))
    await node._dispatch(ice(session, trickled(mdns(hosts[0]))))
    # the viewer's offer comes while the relay still waits for the camera's answer
    await node._dispatch(SessionOffer(session_id=session, sdp=offer))
    for host in hosts:
        await node._dispatch(ice(session, trickled(host)))
    await node._dispatch(ice(session, None))
    await outbox.first(SessionRequest)  # the relay asks for the camera
    upstream = node.upstreams[device]
    upstream.codec = next(iter(codecs.offered_codecs(offer)))  # as if the camera answered
    upstream.negotiated.set()

    answer = await outbox.first(SessionAnswer)
    assert answer.session_id == session
    down = node.downstreams[session]
    assert down.pc is not None
    ices = [t.receiver.transport.transport for t in down.pc.getTransceivers()]
    addresses = {c.ip for t in ices for c in t.getRemoteCandidates()}
    assert addresses == {"192.0.2.9", "127.0.0.1"}
    assert down.remote.hidden == 1
