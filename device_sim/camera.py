"""The simulated camera's signaling client: hold the WebSocket, answer viewers' offers.

It is a real client of docs/protocol.md and the reference for firmware engineers:

- connect to ``signaling_url``, send ``hello`` with a fresh EdDSA assertion (single use, so
  one per attempt), wait for ``welcome``, then send an application ``ping`` every
  ``heartbeat_s``;
- reconnect with exponential backoff and full jitter when the connection drops, at once
  (after ``reconnect_after_ms``) when told ``go_away``; stop for good on 4404 (the device
  was removed from its account: it must be onboarded again);
- per ``session.offer``: a :class:`~device_sim.rtc.CameraPeer` answers with its video; remote
  ``session.ice`` candidates are added; ICE that does not connect in time ends the session
  with ``ice_failed``; ``session.end`` closes the peer.
"""

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from device_sim.identity import assertion
from device_sim.state import CameraState

log = logging.getLogger(__name__)

CLOSE_REMOVED = 4404
MAX_FRAME = 64 * 1024
WELCOME_TIMEOUT_S = 10.0


@dataclass
class CameraStats:
    connects: int = 0
    reconnects: int = 0
    errors: int = 0
    sessions: int = 0


class Camera:
    """One camera. ``video`` is a source with ``track()`` (None: signaling only)."""

    def __init__(
        self,
        state: CameraState,
        video: Any | None = None,
        *,
        connect_timeout_s: float = 10.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.state = state
        self.video = video
        self.connect_timeout_s = connect_timeout_s
        self.backoff_max_s = backoff_max_s
        self.stats = CameraStats()
        self.online = asyncio.Event()
        self.removed = False
        self._peers: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.tag = f"camera {state.device_id[-6:]}"

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set (or the device is removed)."""
        backoff = 0.5
        while not stop.is_set():
            go_away_ms: int | None = None
            try:
                go_away_ms = await self._connection(stop)
                backoff = 0.5
            except (OSError, TimeoutError, websockets.WebSocketException, ValueError) as exc:
                self.stats.errors += 1
                log.info("%s: connection failed: %s", self.tag, exc)
            finally:
                self.online.clear()
                await self._close_peers()
            if stop.is_set() or self.removed:
                return
            if go_away_ms is not None:
                delay = go_away_ms / 1000
            else:
                delay = random.uniform(0, backoff)  # noqa: S311 (jitter, not crypto)
                backoff = min(backoff * 2, self.backoff_max_s)
            self.stats.reconnects += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _connection(self, stop: asyncio.Event) -> int | None:
        """One connection's life; returns go_away's delay, or None when it just ended."""
        token = assertion(self.state.key, self.state.device_id, self.state.cloud_url)
        async with websockets.connect(
            self.state.signaling_url, max_size=MAX_FRAME, open_timeout=10, close_timeout=2
        ) as socket:
            await socket.send(json.dumps({"type": "hello", "token": token}))
            welcome = json.loads(await asyncio.wait_for(socket.recv(), WELCOME_TIMEOUT_S))
            if welcome.get("type") != "welcome":
                raise ValueError(f"expected welcome, got {welcome.get('type')!r}")
            self.stats.connects += 1
            self.online.set()
            log.info("%s: online as %s", self.tag, welcome["connection_id"])
            heartbeat = asyncio.create_task(self._heartbeat(socket, welcome["heartbeat_s"]))
            stopper = asyncio.create_task(self._close_on(stop, socket))
            try:
                return await self._read(socket)
            except websockets.ConnectionClosed as closed:
                if closed.rcvd is not None and closed.rcvd.code == CLOSE_REMOVED:
                    self.removed = True
                    log.warning("%s: removed from its account; onboard it again", self.tag)
                    return None
                raise
            finally:
                heartbeat.cancel()
                stopper.cancel()
                await asyncio.gather(heartbeat, stopper, return_exceptions=True)

    async def _close_on(self, stop: asyncio.Event, socket: ClientConnection) -> None:
        await stop.wait()
        await socket.close()

    async def _heartbeat(self, socket: ClientConnection, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await socket.send('{"type":"ping"}')

    async def _read(self, socket: ClientConnection) -> int | None:
        async for frame in socket:
            message = json.loads(frame)
            kind = message.get("type")
            if kind == "go_away":
                log.info("%s: told to go away (%s)", self.tag, message.get("reason"))
                return int(message.get("reconnect_after_ms", 0))
            if kind == "session.offer":
                self._spawn(self._offer(socket, message))
            elif kind == "session.ice":
                peer = self._peers.get(message["session_id"])
                if peer is not None:
                    await peer.add_candidate(message.get("candidate"))
            elif kind == "session.end":
                peer = self._peers.pop(message["session_id"], None)
                if peer is not None:
                    log.info(
                        "%s: session %s ended: %s",
                        self.tag,
                        message["session_id"],
                        message.get("reason"),
                    )
                    await peer.close()
            elif kind == "status" and not message.get("ok", True):
                log.warning("%s: cloud says %s", self.tag, message.get("error"))
        return None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end(self, socket: ClientConnection, session_id: str, reason: str) -> None:
        peer = self._peers.pop(session_id, None)
        if peer is not None:
            await peer.close()
        with contextlib.suppress(websockets.ConnectionClosed):
            await socket.send(
                json.dumps({"type": "session.end", "session_id": session_id, "reason": reason})
            )

    async def _offer(self, socket: ClientConnection, message: dict[str, Any]) -> None:
        session_id = message["session_id"]
        if self.video is None:
            log.info("%s: video is off; refusing session %s", self.tag, session_id)
            await self._end(socket, session_id, "resource_exhausted")
            return
        from device_sim.rtc import CameraPeer  # aiortc is only loaded by cameras with video

        peer = CameraPeer(
            session_id,
            self.video.track(),
            message.get("ice_servers") or [],
            connect_timeout_s=self.connect_timeout_s,
        )
        self._peers[session_id] = peer
        self.stats.sessions += 1
        try:
            answer = await peer.answer(message["sdp"])
        except Exception as exc:
            log.warning("%s: cannot answer session %s: %s", self.tag, session_id, exc)
            await self._end(socket, session_id, "invalid_offer")
            return
        await socket.send(
            json.dumps({"type": "session.answer", "session_id": session_id, "sdp": answer})
        )
        # aiortc puts every local candidate in the answer: announce the end of candidates.
        await socket.send(
            json.dumps({"type": "session.ice", "session_id": session_id, "candidate": None})
        )
        ended = await peer.wait_failed()
        if ended is not None and self._peers.get(session_id) is peer:
            log.warning("%s: session %s failed: %s", self.tag, session_id, ended)
            await self._end(socket, session_id, ended.reason)

    async def _close_peers(self) -> None:
        peers, self._peers = list(self._peers.values()), {}
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
