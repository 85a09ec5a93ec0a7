"""The relay node: the camera's viewer upstream, the viewers' camera downstream, and analytics.

Signaling (docs/protocol.md): the node holds ``/ws/v1/relay`` with its
credential, reports ``relay.load`` every few seconds, and for each ``relay.session`` (a viewer
routed through it) makes sure it watches that camera: one upstream aiortc connection per camera
(its own ``session.request``, allowed while it serves a viewer of it), fanned out to every
viewer by :class:`relay.media.Fanout` without re-encoding. The upstream closes
``upstream_grace_s`` after its last viewer leaves; when the camera goes away, its viewers'
sessions end with ``device_offline``.

Analytics: each upstream's decoded picture is sampled at ``analysis_fps`` and analysed by
:class:`relay.analysis.Analysis` (motion, then YOLO within the node's budget, event threads).
"""

import asyncio
import contextlib
import json
import logging
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from aiortc import RTCPeerConnection
from websockets.asyncio.client import ClientConnection

from peer import codecs
from peer.ice import RemoteCandidates, rtc_configuration
from relay.analysis import Analysis
from relay.detector import Detector
from relay.media import Fanout, forward_keyframe_requests
from relay.settings import RelaySettings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
UPSTREAM_ANSWER_TIMEOUT_S = 10.0
LOAD_EVERY_S = 5.0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@dataclass
class Upstream:
    """The relay watching one camera, shared by every viewer of it here."""

    device_id: str
    fanout: Fanout
    request_id: str
    session_id: str | None = None
    pc: RTCPeerConnection | None = None
    viewers: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closing: asyncio.TimerHandle | None = None
    codec: str | None = None  # what the camera answered with (peer.codecs), once it has
    negotiated: asyncio.Event = field(default_factory=asyncio.Event)
    remote: RemoteCandidates = field(default_factory=lambda: RemoteCandidates("upstream"))


@dataclass
class Downstream:
    session_id: str
    device_id: str
    pc: RTCPeerConnection | None = None
    remote: RemoteCandidates = field(default_factory=lambda: RemoteCandidates("downstream"))


class RelayNode:
    def __init__(self, settings: RelaySettings, detector: Detector | None = None) -> None:
        self.settings = settings
        self.detector = detector
        self.upstreams: dict[str, Upstream] = {}
        self.downstreams: dict[str, Downstream] = {}
        self.online = asyncio.Event()
        self.stats = {"events_sent": 0, "events_failed": 0, "frames_analysed": 0}
        self.analysis = Analysis(settings, detector, self.stats, self._spawn)
        self._socket: ClientConnection | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # the connection to the cloud ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected (reconnecting with backoff and jitter) until ``stop`` is set."""
        http = self.analysis.http = httpx.AsyncClient(
            base_url=self.settings.cloud_url,
            timeout=10,
            headers={"Authorization": f"Bearer {self.settings.credential}"},
        )
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    await self._connection(stop)
                    backoff = 0.5
                except (OSError, TimeoutError, websockets.WebSocketException, ValueError) as exc:
                    log.info("relay %s: connection failed: %s", self.settings.relay_id, exc)
                finally:
                    self.online.clear()
                    await self._close_all()
                if stop.is_set():
                    break
                delay = random.uniform(0, backoff)  # noqa: S311 (jitter)
                backoff = min(backoff * 2, 30.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            await http.aclose()
            if self.detector is not None:
                await self.detector.close()

    async def _connection(self, stop: asyncio.Event) -> None:
        url = self.settings.cloud_url.replace("http", "ws", 1) + "/ws/v1/relay"
        async with websockets.connect(url, max_size=64 * 1024, open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "hello", "token": self.settings.credential}))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if welcome.get("type") != "welcome":
                raise ValueError(f"expected welcome, got {welcome.get('type')!r}")
            self._socket = ws
            self.online.set()
            log.info("relay %s: registered as %s", self.settings.relay_id, welcome["connection_id"])
            background = [
                asyncio.create_task(self._report_load(ws)),
                asyncio.create_task(self._close_on(stop, ws)),
            ]
            try:
                async for frame in ws:
                    await self._dispatch(json.loads(frame))
            except websockets.ConnectionClosed:
                pass
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                self._socket = None

    async def _close_on(self, stop: asyncio.Event, ws: ClientConnection) -> None:
        await stop.wait()
        await ws.close()

    async def _report_load(self, ws: ClientConnection) -> None:
        logged = -1
        while True:
            stats = getattr(self.detector, "stats", None)
            if callable(stats) and (current := stats()).completed != logged:
                logged = current.completed
                log.info(
                    "detector: %d inferences (%d skipped busy), p50 %s ms, p95 %s ms; %s",
                    current.completed,
                    current.busy,
                    _ms(current.latency_p50_ms),
                    _ms(current.latency_p95_ms),
                    self.stats,
                )
            sessions = len(self.downstreams)
            load = min(1.0, sessions / self.settings.max_sessions)
            message = {
                "type": "relay.load",
                "load": load,
                "sessions": sessions,
                "cameras": len(self.upstreams),
            }
            await ws.send(json.dumps(message))
            await ws.send('{"type":"ping"}')
            if self.settings.health_file:
                await asyncio.to_thread(Path(self.settings.health_file).touch)
            await asyncio.sleep(LOAD_EVERY_S)

    async def send(self, message: dict[str, Any]) -> None:
        if self._socket is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._socket.send(json.dumps(message))

    def _spawn(self, coro: Any, owner: set[asyncio.Task[None]] | None = None) -> None:
        tasks = self._tasks if owner is None else owner
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # signaling ----------------------------------------------------------------------------------

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        session_id = str(message.get("session_id", ""))
        if kind == "relay.session":
            await self._open_downstream(session_id, str(message["device_id"]))
        elif kind == "session.created":
            upstream = next(
                (u for u in self.upstreams.values() if u.request_id == message.get("id")), None
            )
            if upstream is not None:
                upstream.session_id = session_id
                self._spawn(
                    self._offer_upstream(upstream, message.get("ice_servers") or []), upstream.tasks
                )
        elif kind == "session.offer" and session_id in self.downstreams:
            self._spawn(self._answer_downstream(self.downstreams[session_id], message))
        elif kind == "session.answer":
            upstream = self._upstream_of(session_id)
            if upstream is not None and upstream.pc is not None:
                await upstream.remote.set_description(upstream.pc, message["sdp"], "answer")
                upstream.codec = next(iter(codecs.video_codecs(message["sdp"])), None)
                upstream.negotiated.set()
                log.info("relay: camera %s sends %s", upstream.device_id, upstream.codec)
        elif kind == "session.ice":
            remote = self._remote_of(session_id)
            if remote is not None:
                try:
                    await remote.add(message.get("candidate"))
                except ValueError as exc:
                    log.warning("relay: session %s: %s", session_id, exc)
        elif kind == "session.end":
            await self._ended(session_id, str(message.get("reason", "peer_hangup")))
        elif kind == "status" and not message.get("ok", True):
            await self._refused(message)
        elif kind == "go_away" and self._socket is not None:
            await self._socket.close()

    def _upstream_of(self, session_id: str) -> Upstream | None:
        return next((u for u in self.upstreams.values() if u.session_id == session_id), None)

    def _remote_of(self, session_id: str) -> RemoteCandidates | None:
        down = self.downstreams.get(session_id)
        if down is not None:
            return down.remote
        up = self._upstream_of(session_id)
        return up.remote if up is not None else None

    async def _refused(self, message: dict[str, Any]) -> None:
        upstream = next(
            (u for u in self.upstreams.values() if u.request_id == message.get("id")), None
        )
        log.warning("relay: the cloud refused %s: %s", message.get("id"), message.get("error"))
        if upstream is not None:
            await self._camera_gone(upstream, "device_offline")

    async def _ended(self, session_id: str, reason: str) -> None:
        down = self.downstreams.pop(session_id, None)
        if down is not None:
            await self._close_downstream(down)
            return
        upstream = self._upstream_of(session_id)
        if upstream is not None:
            log.info("relay: upstream of %s ended (%s)", upstream.device_id, reason)
            await self._camera_gone(upstream, "device_offline")

    # upstream: the relay watches the camera ------------------------------------------------------

    async def _open_downstream(self, session_id: str, device_id: str) -> None:
        self.downstreams[session_id] = Downstream(session_id, device_id)
        upstream = self.upstreams.get(device_id)
        if upstream is None:
            upstream = Upstream(device_id, Fanout(device_id), secrets.token_hex(6))
            self.upstreams[device_id] = upstream
            await self.send(
                {
                    "type": "session.request",
                    "id": upstream.request_id,
                    "device_id": device_id,
                    "mode": "p2p",
                }
            )
            self._spawn(self.analysis.watch(device_id, upstream.fanout), upstream.tasks)
        if upstream.closing is not None:
            upstream.closing.cancel()
            upstream.closing = None
        upstream.viewers.add(session_id)

    async def _offer_upstream(self, upstream: Upstream, ice_servers: list[dict[str, Any]]) -> None:
        pc = RTCPeerConnection(rtc_configuration(ice_servers))
        upstream.pc = pc
        pc.addTransceiver("video", direction="recvonly")
        codecs.prefer(pc, codecs.FORWARDED)

        @pc.on("track")
        def on_track(track: Any) -> None:
            receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
            upstream.fanout.attach(receiver)

        self._watch_connection(pc, upstream.session_id or "", upstream=upstream)
        await pc.setLocalDescription(await pc.createOffer())
        sid = upstream.session_id
        await self.send(
            {"type": "session.offer", "session_id": sid, "sdp": pc.localDescription.sdp}
        )
        await self.send({"type": "session.ice", "session_id": sid, "candidate": None})

    async def _camera_gone(self, upstream: Upstream, reason: str) -> None:
        """The camera left: its viewers' sessions end, the upstream closes."""
        self.upstreams.pop(upstream.device_id, None)
        for session_id in list(upstream.viewers):
            down = self.downstreams.pop(session_id, None)
            if down is not None:
                await self.send({"type": "session.end", "session_id": session_id, "reason": reason})
                await self._close_downstream(down, keep_upstream=True)
        await self._close_upstream(upstream, tell_cloud=False)

    async def _close_upstream(self, upstream: Upstream, *, tell_cloud: bool = True) -> None:
        self.upstreams.pop(upstream.device_id, None)
        if tell_cloud and upstream.session_id:
            await self.send(
                {"type": "session.end", "session_id": upstream.session_id, "reason": "user_hangup"}
            )
        for task in list(upstream.tasks):
            task.cancel()
        await asyncio.gather(*upstream.tasks, return_exceptions=True)
        await upstream.fanout.close()
        if upstream.pc is not None:
            await upstream.pc.close()
        self.analysis.budget.forget(upstream.device_id)

    # downstream: the relay answers a viewer -----------------------------------------------------

    async def _answer_downstream(self, down: Downstream, message: dict[str, Any]) -> None:
        upstream = self.upstreams.get(down.device_id)
        if upstream is None:
            await self.send(
                {"type": "session.end", "session_id": down.session_id, "reason": "device_offline"}
            )
            return
        codec = await self._upstream_codec(upstream)
        if codec is None or codec not in codecs.video_codecs(message["sdp"]):
            # A viewer that cannot decode what the camera sends would get a black picture.
            log.info("relay: session %s cannot take %s", down.session_id, codec)
            self.downstreams.pop(down.session_id, None)
            reason = "timeout" if codec is None else "codec_mismatch"
            await self.send(
                {"type": "session.end", "session_id": down.session_id, "reason": reason}
            )
            await self._close_downstream(down)
            return
        pc = RTCPeerConnection(rtc_configuration(message.get("ice_servers") or []))
        down.pc = pc
        try:
            track = upstream.fanout.subscribe()
            sender = pc.addTransceiver(track, direction="sendonly").sender
            forward_keyframe_requests(sender, track)
            # Before the offer is set: aiortc picks an answer's codecs from the preferences
            # of the transceiver the offer's video section lands on, there and then.
            codecs.prefer(pc, (codec,))
            await down.remote.set_description(pc, message["sdp"], "offer")
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            log.warning("relay: cannot answer session %s: %s", down.session_id, exc)
            self.downstreams.pop(down.session_id, None)
            await self.send(
                {"type": "session.end", "session_id": down.session_id, "reason": "invalid_offer"}
            )
            await self._close_downstream(down)
            return
        self._watch_connection(pc, down.session_id)
        await self.send(
            {
                "type": "session.answer",
                "session_id": down.session_id,
                "sdp": pc.localDescription.sdp,
            }
        )
        await self.send({"type": "session.ice", "session_id": down.session_id, "candidate": None})

    async def _upstream_codec(self, upstream: Upstream) -> str | None:
        """The camera's codec, once its answer came (None if it did not within the time)."""
        try:
            async with asyncio.timeout(UPSTREAM_ANSWER_TIMEOUT_S):
                await upstream.negotiated.wait()
        except TimeoutError:
            return None
        return upstream.codec

    async def _close_downstream(self, down: Downstream, *, keep_upstream: bool = False) -> None:
        if down.pc is not None:
            for sender in down.pc.getSenders():
                if sender.track is not None:
                    sender.track.stop()
            await down.pc.close()
        upstream = self.upstreams.get(down.device_id)
        if upstream is None or keep_upstream:
            return
        upstream.viewers.discard(down.session_id)
        if not upstream.viewers and upstream.closing is None:
            loop = asyncio.get_running_loop()
            upstream.closing = loop.call_later(
                self.settings.upstream_grace_s,
                lambda: self._spawn(self._close_if_unused(upstream)),
            )

    async def _close_if_unused(self, upstream: Upstream) -> None:
        upstream.closing = None
        if not upstream.viewers and self.upstreams.get(upstream.device_id) is upstream:
            log.info("relay: last viewer of %s left; closing its upstream", upstream.device_id)
            await self._close_upstream(upstream)

    def _watch_connection(
        self, pc: RTCPeerConnection, session_id: str, *, upstream: Upstream | None = None
    ) -> None:
        """End a session whose ICE fails or does not connect in time (aiortc may stay silent)."""

        async def fail() -> None:
            if upstream is not None:
                await self._camera_gone(upstream, "ice_failed")
            elif self.downstreams.pop(session_id, None) is not None:
                await self.send(
                    {"type": "session.end", "session_id": session_id, "reason": "ice_failed"}
                )
                await pc.close()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "failed":
                self._spawn(fail())

        async def deadline() -> None:
            await asyncio.sleep(CONNECT_TIMEOUT_S)
            if pc.connectionState not in ("connected", "closed"):
                log.warning(
                    "relay: session %s did not connect within %.0f s", session_id, CONNECT_TIMEOUT_S
                )
                await fail()

        self._spawn(deadline(), upstream.tasks if upstream is not None else None)

    async def _close_all(self) -> None:
        for down in list(self.downstreams.values()):
            await self._close_downstream(down, keep_upstream=True)
        self.downstreams.clear()
        for upstream in list(self.upstreams.values()):
            await self._close_upstream(upstream, tell_cloud=False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
