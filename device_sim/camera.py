"""The simulated camera's signaling client: hold the WebSocket, answer viewers' offers.

It is a real client of docs/protocol.md and the reference for firmware engineers. The
connection is a :class:`~peer.signaling.SignalingClient`:

- connect to ``signaling_url``, send ``hello`` with a fresh EdDSA assertion (single use, so
  one per attempt), wait for ``welcome``, then send an application ``ping`` every
  ``heartbeat_s``;
- reconnect with exponential backoff and full jitter when the connection drops, at once
  (after ``reconnect_after_ms``) when told ``go_away``; stop for good on 4404 (the device
  was removed from its account: it must be onboarded again);

and the camera answers what comes over it (sessions end with the connection):

- per ``session.offer``: a :class:`~device_sim.rtc.CameraPeer` answers with its video; remote
  ``session.ice`` candidates are added; ICE that does not connect in time ends the session
  with ``ice_failed``; once connected, ``session.stats`` says how (selected pair, ICE
  duration); ``session.end`` closes the peer.

A browser trickles its candidates right behind its offer, and the camera answers each offer
in a task of its own once its video source has a keyframe, so they often arrive before the
session's peer exists: they are held per session (:class:`~peer.ice.EarlyCandidates`, bounded
in number and time) and handed to the peer when it is made, in their order.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from device_sim.identity import assertion
from device_sim.state import CameraState
from peer.ice import EarlyCandidates
from peer.signaling import SignalingClient, SignalingStats
from protocol.messages import (
    DeviceMotion,
    Hello,
    ServerMessage,
    SessionAnswer,
    SessionEnd,
    SessionIce,
    SessionOffer,
    SessionStats,
    SnapshotRequest,
    Status,
    turn_protocol,
)

log = logging.getLogger(__name__)

SOURCE_WAIT_S = 3.0  # how long a session waits for a video source's first keyframe
MOTION_POLL_S = 0.2  # how often the camera's own motion detection is read


@dataclass
class CameraStats(SignalingStats):
    sessions: int = 0


class Camera:
    """One camera. ``video`` is a source with ``track()`` (None: signaling only).

    ``motion`` is the camera's own motion detection (None: it has none): while connected the
    camera reports each change of it to the cloud (``device.motion``), as real cameras
    report on-device motion, so that ``on_motion`` analysis attaches a relay node for it.
    """

    def __init__(
        self,
        state: CameraState,
        video: Any | None = None,
        *,
        motion: Callable[[], bool] | None = None,
        connect_timeout_s: float = 10.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.state = state
        self.video = video
        self.motion = motion
        self.connect_timeout_s = connect_timeout_s
        self.backoff_max_s = backoff_max_s
        self.stats = CameraStats()
        self._peers: dict[str, Any] = {}
        self._early = EarlyCandidates(f"camera {state.device_id[-6:]}")
        self._tasks: set[asyncio.Task[None]] = set()
        self.tag = f"camera {state.device_id[-6:]}"
        self.signaling = SignalingClient(
            state.signaling_url,
            self._hello,
            self._handle,
            name=self.tag,
            on_offline=self._close_peers,
            while_online=None if motion is None else self._report_motion,
            backoff_max_s=backoff_max_s,
            stats=self.stats,
        )
        self.online = self.signaling.online

    @property
    def removed(self) -> bool:
        """The cloud closed with 4404: the device left its account; onboard it again."""
        return self.signaling.removed

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set (or the device is removed)."""
        await self.signaling.run(stop)
        if self.removed:
            log.warning("%s: removed from its account; onboard it again", self.tag)

    def _hello(self) -> Hello:
        """A fresh assertion per attempt: the cloud refuses a replayed one."""
        token = assertion(self.state.key, self.state.device_id, self.state.cloud_url)
        return Hello(token=token)

    async def _handle(self, message: ServerMessage) -> None:
        """The cloud's messages for this camera, in order (the client handles the rest)."""
        match message:
            case SessionOffer():
                self._spawn(self._offer(message))
            case SessionIce():
                candidate = message.candidate
                json = None if candidate is None else candidate.dump()
                peer = self._peers.get(message.session_id)
                if peer is not None:
                    await peer.add_candidate(json)
                else:  # its offer is still being answered, or not here yet
                    self._early.hold(message.session_id, json)
            case SessionEnd():
                self._early.discard(message.session_id)
                peer = self._peers.pop(message.session_id, None)
                if peer is not None:
                    log.info(
                        "%s: session %s ended: %s", self.tag, message.session_id, message.reason
                    )
                    await peer.close()
            case SnapshotRequest():
                self._spawn(self._snapshot(message.id))
            case Status(ok=False, error=error):
                log.warning("%s: cloud says %s", self.tag, error and error.dump())

    async def _snapshot(self, request_id: str) -> None:
        """Upload a JPEG of the picture now, as the cloud asked (with a fresh assertion)."""
        from device_sim.sources import snapshot_jpeg

        jpeg = None if self.video is None else await asyncio.to_thread(snapshot_jpeg, self.video)
        if jpeg is None:
            log.warning("%s: snapshot %s asked before any picture", self.tag, request_id)
            return
        token = assertion(self.state.key, self.state.device_id, self.state.cloud_url)
        try:
            async with httpx.AsyncClient(base_url=self.state.cloud_url, timeout=10) as http:
                response = await http.put(
                    f"/api/v1/devices/snapshots/{request_id}",
                    content=jpeg,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"},
                )
        except httpx.HTTPError as exc:
            log.warning("%s: snapshot upload failed: %s", self.tag, exc)
            return
        if response.status_code != 204:
            log.warning("%s: snapshot refused (%s)", self.tag, response.status_code)

    async def _report_motion(self) -> None:
        """While online: tell the cloud when the camera's own motion detection changes
        (each connection starts without motion, so an ongoing one is reported at once)."""
        assert self.motion is not None
        reported = False
        while True:
            if (active := self.motion()) != reported:
                await self.signaling.send(DeviceMotion(active=active))
                log.info("%s: motion %s", self.tag, "started" if active else "stopped")
                reported = active
            await asyncio.sleep(MOTION_POLL_S)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end(self, session_id: str, reason: str) -> None:
        """Close the session's peer and tell the cloud why (``reason``: an end reason of
        docs/protocol.md; another raises pydantic's ValidationError)."""
        peer = self._peers.pop(session_id, None)
        if peer is not None:
            await peer.close()
        end = SessionEnd.model_validate({"session_id": session_id, "reason": reason})
        await self.signaling.send(end)

    async def _offer(self, message: SessionOffer) -> None:
        session_id = message.session_id
        offered_at = time.monotonic()  # ice_ms counts from here (docs/protocol.md)
        if self.video is None:
            log.info("%s: video is off; refusing session %s", self.tag, session_id)
            await self._end(session_id, "resource_exhausted")
            return
        # aiortc is only loaded by cameras with video
        from device_sim.camera_peer import CameraPeer, CodecMismatch, VideoUnavailable

        track = self.video.track()
        if hasattr(track, "stream"):  # encoded once: its codec is known from its first keyframe
            await track.stream.wait_codec(SOURCE_WAIT_S)
        peer = CameraPeer(
            session_id,
            track,
            [server.dump() for server in message.ice_servers or []],
            connect_timeout_s=self.connect_timeout_s,
        )
        self._peers[session_id] = peer
        # Trickled right behind the offer: held until now (and checked then). Before answer()
        # the peer only queues them, without suspending, so none that comes later overtakes
        # them; it hands them to aiortc once answer() has set the offer.
        for candidate in self._early.take(session_id):
            await peer.add_candidate(candidate)
        self.stats.sessions += 1
        try:
            answer = await peer.answer(message.sdp)
        except Exception as exc:
            log.warning("%s: cannot answer session %s: %s", self.tag, session_id, exc)
            reason = (
                "codec_mismatch"
                if isinstance(exc, CodecMismatch)
                else "video_unavailable"
                if isinstance(exc, VideoUnavailable)
                else "invalid_offer"
            )
            await self._end(session_id, reason)
            return
        await self.signaling.send(SessionAnswer(session_id=session_id, sdp=answer))
        # aiortc puts every local candidate in the answer: announce the end of candidates.
        await self.signaling.send(SessionIce(session_id=session_id, candidate=None))
        if await peer.wait_connected() and self._peers.get(session_id) is peer:
            await self._report(peer, message, offered_at)
        ended = await peer.wait_failed()
        if ended is not None and self._peers.get(session_id) is peer:
            log.warning("%s: session %s failed: %s", self.tag, session_id, ended)
            await self._end(session_id, ended.reason)

    async def _report(self, peer: Any, offer: SessionOffer, offered_at: float) -> None:
        """``session.stats`` of a connected session: the selected pair and the time from the
        offer to ICE connected (docs/protocol.md, "Session statistics"; a camera has no time
        to first frame). aiortc reaches its TURN server by the first TURN URL only."""
        pair, connected_at = peer.selected_pair(), peer.connected_at
        if pair is None or connected_at is None:
            return
        urls = [url for server in offer.ice_servers or [] for url in server.urls]
        try:
            stats = SessionStats.of_pair(
                offer.session_id,
                pair,
                ice_ms=(connected_at - offered_at) * 1000,
                turn=turn_protocol(urls) or "udp",
            )
        except ValueError as exc:
            log.warning("%s: no stats for session %s: %s", self.tag, offer.session_id, exc)
            return
        log.info("%s: session %s connected: %s", self.tag, offer.session_id, stats.dump())
        await self.signaling.send(stats)

    async def _close_peers(self) -> None:
        peers, self._peers = list(self._peers.values()), {}
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
