"""The relay node: the camera's viewer upstream, the viewers' camera downstream, and analytics.

Signaling (docs/protocol.md): the node holds ``/ws/v1/relay`` with its credential (a
:class:`~peer.signaling.SignalingClient`), reports ``relay.load`` (with the number of cameras
it can analyse) every few seconds, and watches a camera while it serves a viewer of it
(``relay.session``) or the cloud assigned the camera to it for analysis (``relay.assign``:
``continuous`` cameras all the time, ``on_motion`` ones while the camera reports motion).
One upstream aiortc connection per camera (its own ``session.request``), fanned out to every
viewer by :class:`relay.media.Fanout` without re-encoding and analysed once: watching an
analysed camera adds no upstream. An upstream closes ``upstream_grace_s`` after nobody needs
it any more; when the camera goes away, its viewers' sessions end with ``device_offline``,
and an assigned camera is asked for again at the next load report. Sessions end with the
connection to the cloud. This module decides when connections open and close; each one's
own state and work sit in :class:`relay.upstream.Upstream` (the camera) and
:class:`relay.downstream.Downstream` (a viewer: its answer, or why it is refused).

Analytics: each upstream's decoded picture is sampled at ``analysis_fps`` and analysed by
:class:`relay.analysis.Analysis` (motion, then YOLO within the node's budget, event threads).
"""

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCPeerConnection

from peer import codecs, internals, reach
from peer.ice import EarlyCandidates, RemoteCandidates, rtc_configuration
from peer.signaling import SignalingClient
from protocol.messages import (
    AssignedCamera,
    EndReason,
    Hello,
    Message,
    RelayAssign,
    RelayLoad,
    RelaySession,
    ServerMessage,
    SessionAnswer,
    SessionCreated,
    SessionEnd,
    SessionIce,
    SessionOffer,
    SessionRequest,
    SnapshotRequest,
    Status,
)
from relay import metrics
from relay.analysis import Analysis
from relay.detector import Detector
from relay.downstream import Downstream, Refused
from relay.loop_lag import LoopLag
from relay.media import Fanout
from relay.settings import RelaySettings
from relay.uploads import UploadAnalysis
from relay.upstream import Upstream

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
LOAD_EVERY_S = 5.0
SHUTDOWN_REPORTS_S = 5.0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


class RelayNode:
    def __init__(self, settings: RelaySettings, detector: Detector | None = None) -> None:
        internals.require()  # aiortc's internals this node uses: fail now, not mid-session
        self.settings = settings
        self.detector = detector
        self.upstreams: dict[str, Upstream] = {}
        self.downstreams: dict[str, Downstream] = {}
        self.assigned: dict[str, AssignedCamera] = {}  # the cloud's latest relay.assign
        self.uploads: set[str] = set()  # uploaded videos analysed (or being) here
        self.stats = {"events_sent": 0, "events_failed": 0, "frames_analysed": 0}
        self.analysis = Analysis(settings, detector, self.stats, self._spawn)
        self._tasks: set[asyncio.Task[None]] = set()
        # session.ice of sessions not known here yet (the cloud sends relay.session before
        # the viewer can offer, so this is a safety net): handed over when they are
        self._early = EarlyCandidates(f"relay {settings.relay_id}")
        self.signaling = SignalingClient(
            settings.cloud_url.replace("http", "ws", 1) + "/ws/v1/relay",
            lambda: Hello(token=settings.credential),
            self._dispatch,
            name=f"relay {settings.relay_id}",
            on_offline=self._close_all,
            while_online=self._report_load,
            stop_on_removed=False,  # 4404 is for cameras; a relay just reconnects
        )
        self.online = self.signaling.online
        metrics.LIVE.nodes.add(self)  # viewers and upstreams, read at scrape time

    # the connection to the cloud ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected (reconnecting with backoff and jitter) until ``stop`` is set."""
        http = self.analysis.http = httpx.AsyncClient(
            base_url=self.settings.cloud_url,
            timeout=10,
            headers={"Authorization": f"Bearer {self.settings.credential}"},
        )
        try:
            await self.signaling.run(stop)
        finally:
            # Event reports still held (the cloud was away): a few seconds to deliver them.
            await self.analysis.reports.flush(SHUTDOWN_REPORTS_S)
            await self.analysis.reports.close()
            await http.aclose()
            if self.detector is not None:
                await self.detector.close()

    async def _report_load(self) -> None:
        """While online: ``relay.load`` now and every ``LOAD_EVERY_S`` (the cloud's
        allocation forgets a relay it has not heard from lately); the client pings."""
        logged = -1
        lag = LoopLag()
        self._spawn(lag.run())
        while True:
            log.info("relay: event-loop lag %s", lag.summary())
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
            await self.send(
                RelayLoad(
                    load=load,
                    sessions=sessions,
                    cameras=len(self.upstreams),
                    capacity=self.settings.analysis_capacity,
                )
            )
            await self._reconcile()  # asks again for assigned cameras whose upstream ended
            if self.settings.health_file:
                await asyncio.to_thread(Path(self.settings.health_file).touch)
            await asyncio.sleep(LOAD_EVERY_S)

    async def send(self, message: Message) -> None:
        """Send to the cloud; dropped while offline (sessions end with the connection)."""
        await self.signaling.send(message)

    def _spawn(self, coro: Any, owner: set[asyncio.Task[None]] | None = None) -> None:
        tasks = self._tasks if owner is None else owner
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # signaling ----------------------------------------------------------------------------------

    async def _dispatch(self, message: ServerMessage) -> None:
        match message:
            case RelaySession():
                await self._open_downstream(message.session_id, message.device_id)
            case SnapshotRequest():
                upstream = self.upstreams.get(message.device_id)
                fanout = upstream.fanout if upstream is not None else None
                self._spawn(self.analysis.snapshot(message.id, fanout))
            case RelayAssign():
                self.assigned = {camera.device_id: camera for camera in message.cameras}
                log.info("relay: the cloud assigned %d cameras", len(self.assigned))
                await self._reconcile()
                for upload in message.uploads:
                    if upload.id not in self.uploads:
                        self.uploads.add(upload.id)
                        self._spawn(UploadAnalysis(self.analysis, upload).run())
            case SessionCreated():
                upstream = next(
                    (u for u in self.upstreams.values() if u.request_id == message.id), None
                )
                if upstream is not None:
                    upstream.session_id = message.session_id
                    await self._hand_over_early(message.session_id, upstream.remote)
                    ice_servers = [server.dump() for server in message.ice_servers]
                    self._spawn(self._offer_upstream(upstream, ice_servers), upstream.tasks)
            case SessionOffer() if message.session_id in self.downstreams:
                down = self.downstreams[message.session_id]
                self._spawn(self._answer_downstream(down, message))
            case SessionAnswer():
                upstream = self._upstream_of(message.session_id)
                if upstream is not None and upstream.pc is not None:
                    await upstream.remote.set_description(upstream.pc, message.sdp, "answer")
                    upstream.codec = next(iter(codecs.offered_codecs(message.sdp)), None)
                    upstream.negotiated.set()
                    log.info("relay: camera %s sends %s", upstream.device_id, upstream.codec)
            case SessionIce():
                # A viewer trickles right behind its offer: its downstream holds them until
                # the offer is applied (RemoteCandidates), which may wait for the camera.
                remote = self._remote_of(message.session_id)
                candidate = message.candidate
                json = None if candidate is None else candidate.dump()
                try:
                    if remote is not None:
                        await remote.add(json)
                    else:
                        self._early.hold(message.session_id, json)
                except ValueError as exc:
                    log.warning("relay: session %s: %s", message.session_id, exc)
            case SessionEnd():
                self._early.discard(message.session_id)
                await self._ended(message)
            case Status(ok=False):
                await self._refused(message)

    async def _hand_over_early(self, session_id: str, remote: RemoteCandidates) -> None:
        """Candidates that came before the session was known here, in their order (before
        the description, ``add`` only queues them: later ones cannot overtake them)."""
        for candidate in self._early.take(session_id):
            await remote.add(candidate)

    def _upstream_of(self, session_id: str) -> Upstream | None:
        return next((u for u in self.upstreams.values() if u.session_id == session_id), None)

    def _remote_of(self, session_id: str) -> RemoteCandidates | None:
        down = self.downstreams.get(session_id)
        if down is not None:
            return down.remote
        up = self._upstream_of(session_id)
        return up.remote if up is not None else None

    async def _refused(self, message: Status) -> None:
        upstream = next((u for u in self.upstreams.values() if u.request_id == message.id), None)
        error = message.error and message.error.dump()
        log.warning("relay: the cloud refused %s: %s", message.id, error)
        if upstream is not None:
            await self._camera_gone(upstream, "device_offline")

    async def _ended(self, message: SessionEnd) -> None:
        down = self.downstreams.pop(message.session_id, None)
        if down is not None:
            await self._close_downstream(down)
            return
        upstream = self._upstream_of(message.session_id) or next(
            # a request that ended before its session was created (e.g. the camera is offline)
            (u for u in self.upstreams.values() if message.id and u.request_id == message.id),
            None,
        )
        if upstream is not None:
            log.info("relay: upstream of %s ended (%s)", upstream.device_id, message.reason)
            await self._camera_gone(upstream, "device_offline")

    # upstream: the relay watches the camera ------------------------------------------------------

    def _analyses(self, device_id: str) -> bool:
        """Whether the cloud wants this node to watch the camera now: to analyse it, or to
        record it."""
        camera = self.assigned.get(device_id)
        if camera is None:
            return False
        analysed = camera.armed and (camera.mode == "continuous" or camera.motion)
        return analysed or bool(camera.recordings)

    def _armed(self, device_id: str) -> bool:
        """Whether this node reports the camera's events (the cloud assigned it, armed)."""
        camera = self.assigned.get(device_id)
        return camera is not None and camera.armed

    async def _reconcile(self) -> None:
        """Watch every camera assigned for analysis or recording, and record what the owner
        asked for; let go of the others nobody watches."""
        for device_id, camera in list(self.assigned.items()):
            if self._analyses(device_id):
                await self._upstream_for(device_id)
            for order in camera.recordings:
                self.analysis.record(device_id, order)
        for upstream in list(self.upstreams.values()):
            self._close_when_unused(upstream)

    async def _upstream_for(self, device_id: str) -> Upstream:
        """The camera's upstream, opened if there is none (it stays while needed)."""
        upstream = self.upstreams.get(device_id)
        if upstream is None:
            upstream = Upstream(device_id, Fanout(device_id), secrets.token_hex(6))
            self.upstreams[device_id] = upstream
            log.info("relay: watching %s", device_id)
            await self.send(SessionRequest(id=upstream.request_id, device_id=device_id, mode="p2p"))
            watch = self.analysis.watch(
                device_id, upstream.fanout, armed=lambda: self._armed(device_id)
            )
            self._spawn(watch, upstream.tasks)
        if upstream.closing is not None:
            upstream.closing.cancel()
            upstream.closing = None
        return upstream

    async def _open_downstream(self, session_id: str, device_id: str) -> None:
        down = self.downstreams[session_id] = Downstream(session_id, device_id)
        await self._hand_over_early(session_id, down.remote)
        upstream = await self._upstream_for(device_id)
        upstream.viewers.add(session_id)

    async def _offer_upstream(self, upstream: Upstream, ice_servers: list[dict[str, Any]]) -> None:
        pc = RTCPeerConnection(rtc_configuration((await reach.reachable(ice_servers)).servers))
        upstream.pc = pc
        pc.addTransceiver("video", direction="recvonly")
        codecs.prefer(pc, codecs.FORWARDED)

        @pc.on("track")
        def on_track(track: Any) -> None:
            receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
            upstream.fanout.attach(receiver)

        self._watch_connection(pc, upstream.session_id or "", upstream=upstream)
        await pc.setLocalDescription(await pc.createOffer())
        sid = upstream.session_id or ""  # set with session.created, before this runs
        await self.send(SessionOffer(session_id=sid, sdp=pc.localDescription.sdp))
        await self.send(SessionIce(session_id=sid, candidate=None))

    async def _camera_gone(self, upstream: Upstream, reason: EndReason) -> None:
        """The camera left: its viewers' sessions end, the upstream closes."""
        self.upstreams.pop(upstream.device_id, None)
        for session_id in list(upstream.viewers):
            down = self.downstreams.pop(session_id, None)
            if down is not None:
                await self.send(SessionEnd(session_id=session_id, reason=reason))
                await self._close_downstream(down, keep_upstream=True)
        await self._close_upstream(upstream, tell_cloud=False)

    async def _close_upstream(self, upstream: Upstream, *, tell_cloud: bool = True) -> None:
        self.upstreams.pop(upstream.device_id, None)
        if tell_cloud and upstream.session_id:
            await self.send(SessionEnd(session_id=upstream.session_id, reason="user_hangup"))
        await upstream.close()
        self.analysis.budget.forget(upstream.device_id)

    # downstream: the relay answers a viewer -----------------------------------------------------

    async def _answer_downstream(self, down: Downstream, message: SessionOffer) -> None:
        upstream = self.upstreams.get(down.device_id)
        if upstream is None:
            await self.send(SessionEnd(session_id=down.session_id, reason="device_offline"))
            return
        try:
            pc, answer = await down.answer(message, upstream)
        except Refused as refused:
            self.downstreams.pop(down.session_id, None)
            await self.send(SessionEnd(session_id=down.session_id, reason=refused.reason))
            await self._close_downstream(down)
            return
        self._watch_connection(pc, down.session_id)
        await self.send(SessionAnswer(session_id=down.session_id, sdp=answer))
        await self.send(SessionIce(session_id=down.session_id, candidate=None))

    async def _close_downstream(self, down: Downstream, *, keep_upstream: bool = False) -> None:
        await down.close()
        upstream = self.upstreams.get(down.device_id)
        if upstream is None or keep_upstream:
            return
        upstream.viewers.discard(down.session_id)
        self._close_when_unused(upstream)

    def _unused(self, upstream: Upstream) -> bool:
        return not upstream.viewers and not self._analyses(upstream.device_id)

    def _close_when_unused(self, upstream: Upstream) -> None:
        """Close the upstream ``upstream_grace_s`` from now unless someone needs it by then."""
        if self._unused(upstream) and upstream.closing is None:
            loop = asyncio.get_running_loop()
            upstream.closing = loop.call_later(
                self.settings.upstream_grace_s,
                lambda: self._spawn(self._close_if_unused(upstream)),
            )

    async def _close_if_unused(self, upstream: Upstream) -> None:
        upstream.closing = None
        if self._unused(upstream) and self.upstreams.get(upstream.device_id) is upstream:
            log.info("relay: nobody watches %s any more; closing its upstream", upstream.device_id)
            await self._close_upstream(upstream)

    def _watch_connection(
        self, pc: RTCPeerConnection, session_id: str, *, upstream: Upstream | None = None
    ) -> None:
        """End a session whose ICE fails or does not connect in time (aiortc may stay silent)."""

        async def fail() -> None:
            if upstream is not None:
                await self._camera_gone(upstream, "ice_failed")
                return
            down = self.downstreams.pop(session_id, None)
            if down is not None:  # out of the fan-out now; the upstream's grace period starts
                await self.send(SessionEnd(session_id=session_id, reason="ice_failed"))
                await self._close_downstream(down)

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
        self.assigned = {}  # the cloud sends them again on the next connection
        self.uploads = set()  # their analyses are cancelled with the tasks: start over
        for down in list(self.downstreams.values()):
            await self._close_downstream(down, keep_upstream=True)
        self.downstreams.clear()
        for upstream in list(self.upstreams.values()):
            await self._close_upstream(upstream, tell_cloud=False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
