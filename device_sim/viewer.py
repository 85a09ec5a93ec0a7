"""The Python viewer client: the reference for app developers, used by tests and benchmarks.

    async with await Viewer.login("http://127.0.0.1:8000", email, password) as viewer:
        watch = await viewer.watch(device_id)            # session.request ... first frame
        print(watch.ttff_s, watch.selected_pair(), watch.stats)
        await watch.end()

Flow (docs/protocol.md): ``session.request`` -> ``session.created`` (with ``ice_servers``) ->
a receive-only offer -> ``session.answer`` -> trickled ``session.ice`` -> decoded frames,
and then ``session.stats`` (how the session connected) to the cloud.
Pushes (``device.presence``, ``device.activated``, ``event``) arrive on :attr:`Viewer.pushes`.
"""

import asyncio
import contextlib
import json
import logging
import secrets
import time
from types import TracebackType
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from protocol.messages import SessionStats, turn_protocol

log = logging.getLogger(__name__)


class WatchError(Exception):
    """The session could not start or ended early; ``reason`` is the protocol's word for it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class Watch:
    """One live session with a camera."""

    def __init__(self, viewer: "Viewer", session_id: str, device_id: str, peer: Any) -> None:
        self.viewer = viewer
        self.session_id = session_id
        self.device_id = device_id
        self.peer = peer
        self.route = "p2p"
        self.ttff_s: float | None = None
        self.stats: dict[str, Any] | None = None  # the session.stats sent, once sent
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    def frames(self) -> int:
        return int(self.peer.frames)

    def selected_pair(self) -> dict[str, Any] | None:
        pair: dict[str, Any] | None = self.peer.selected_pair()
        return pair

    async def end(self) -> None:
        if not self.ended.done():
            self.ended.set_result("user_hangup")
            await self.viewer.send(
                {"type": "session.end", "session_id": self.session_id, "reason": "user_hangup"}
            )
        self.viewer.sessions.pop(self.session_id, None)
        await self.peer.close()


class Viewer:
    """A viewer's signaling connection and its sessions; ``codecs`` are the video codecs it
    offers (mime types in order of preference; empty: every codec aiortc has)."""

    codecs: tuple[str, ...] = ()

    def __init__(self, cloud_url: str, access_token: str, refresh_token: str) -> None:
        self.cloud_url = cloud_url.rstrip("/")
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.socket: ClientConnection | None = None
        self.sessions: dict[str, Watch] = {}
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._early: dict[str, list[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def login(cls, cloud_url: str, email: str, password: str) -> "Viewer":
        async with httpx.AsyncClient(base_url=cloud_url, timeout=15) as http:
            response = await http.post(
                "/api/v1/auth/login", json={"email": email, "password": password}
            )
        if response.status_code != 200:
            raise WatchError(
                "unauthenticated", f"login failed ({response.status_code}): {response.text[:200]}"
            )
        tokens = response.json()
        return cls(cloud_url, tokens["access_token"], tokens["refresh_token"])

    async def __aenter__(self) -> "Viewer":
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        url = self.cloud_url.replace("http", "ws", 1) + "/ws/v1/client"
        self.socket = await websockets.connect(url, max_size=64 * 1024, open_timeout=10)
        await self.socket.send(json.dumps({"type": "hello", "token": self.access_token}))
        welcome = json.loads(await asyncio.wait_for(self.socket.recv(), 10))
        if welcome.get("type") != "welcome":
            raise WatchError("unauthenticated", f"expected welcome, got {welcome}")
        self._reader = asyncio.create_task(self._read(self.socket))

    async def send(self, message: dict[str, Any]) -> None:
        if self.socket is None:
            raise WatchError("peer_hangup", "not connected")
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.socket.send(json.dumps(message))

    async def _read(self, socket: ClientConnection) -> None:
        try:
            async for frame in socket:
                await self._dispatch(json.loads(frame))
        except websockets.ConnectionClosed:
            pass
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(WatchError("server_shutdown", "the connection closed"))
            for watch in list(self.sessions.values()):
                if not watch.ended.done():
                    watch.ended.set_result("server_shutdown")

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        waiter = self._waiting.get(str(message.get("id")))
        if kind in ("session.created", "status", "session.end") and waiter and not waiter.done():
            waiter.set_result(message)
            return
        session_id = str(message.get("session_id", ""))
        if kind in ("session.answer", "session.ice", "session.end"):
            watch = self.sessions.get(session_id)
            if watch is None:  # arrived before watch() registered the session
                self._early.setdefault(session_id, []).append(message)
                return
            await self._to_watch(watch, message)
        elif kind in ("device.presence", "device.activated", "event"):
            await self.pushes.put(message)
        elif kind == "go_away":
            log.info("the cloud asks to reconnect: %s", message.get("reason"))

    async def _to_watch(self, watch: Watch, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "session.answer":
            await watch.peer.accept(message["sdp"])
        elif kind == "session.ice":
            await watch.peer.add_candidate(message.get("candidate"))
        elif kind == "session.end" and not watch.ended.done():
            watch.ended.set_result(str(message.get("reason", "peer_hangup")))
            self.sessions.pop(watch.session_id, None)
            await watch.peer.close()

    async def watch(
        self,
        device_id: str,
        *,
        mode: str = "p2p",
        relay_only: bool = False,
        timeout_s: float = 20.0,
        connect_timeout_s: float = 10.0,
        direct_timeout_s: float = 5.0,
    ) -> Watch:
        """Start a session and return once the first frame is decoded (``ttff_s`` set).

        ``mode="auto"`` tries peer to peer first and, when ICE fails or no frame comes
        within ``direct_timeout_s``, asks again through a relay node (the cloud cannot see
        the client's network, so the client decides; ``ttff_s`` then counts both tries).
        """
        if mode != "auto":
            return await self._watch(device_id, mode, relay_only, timeout_s, connect_timeout_s)
        started = time.monotonic()
        try:
            direct = min(timeout_s, direct_timeout_s)
            return await self._watch(
                device_id, "p2p", relay_only, timeout_s, min(connect_timeout_s, direct), direct
            )
        except WatchError as exc:
            if exc.reason not in ("ice_failed", "timeout"):
                raise
            log.info("no direct path to %s (%s); trying a relay node", device_id, exc)
        left = max(1.0, timeout_s - (time.monotonic() - started))
        watch = await self._watch(device_id, "relay", relay_only, left, connect_timeout_s)
        watch.ttff_s = time.monotonic() - started
        return watch

    async def _watch(
        self,
        device_id: str,
        mode: str,
        relay_only: bool,
        timeout_s: float,
        connect_timeout_s: float,
        frame_timeout_s: float | None = None,
    ) -> Watch:
        from device_sim.rtc import PeerEndedError  # aiortc: only when watching
        from device_sim.viewer_peer import ViewerPeer

        started = time.monotonic()
        request_id = secrets.token_hex(6)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        try:
            await self.send(
                {"type": "session.request", "id": request_id, "device_id": device_id, "mode": mode}
            )
            reply = await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            raise WatchError(
                "timeout", f"no answer to session.request within {timeout_s:g} s"
            ) from None
        finally:
            self._waiting.pop(request_id, None)
        if reply["type"] == "status":
            error = reply.get("error") or {}
            raise WatchError(str(error.get("code", "refused")), str(error.get("message", "")))
        if reply["type"] == "session.end":
            raise WatchError(str(reply.get("reason")), "the session ended before it started")
        peer = ViewerPeer(
            reply["ice_servers"],
            relay_only=relay_only,
            connect_timeout_s=connect_timeout_s,
            codecs=self.codecs,
        )
        watch = Watch(self, reply["session_id"], device_id, peer)
        watch.route = reply.get("route", "p2p")
        self.sessions[watch.session_id] = watch
        try:
            offer = await peer.offer()
            offered_at = time.monotonic()  # ice_ms counts from here (docs/protocol.md)
            await self.send({"type": "session.offer", "session_id": watch.session_id, "sdp": offer})
            await self.send(
                {"type": "session.ice", "session_id": watch.session_id, "candidate": None}
            )
            for early in self._early.pop(watch.session_id, []):
                await self._to_watch(watch, early)
            remaining = max(0.001, timeout_s - (time.monotonic() - started))
            if frame_timeout_s is not None:
                remaining = min(remaining, frame_timeout_s)
            frame: asyncio.Future[Any] = asyncio.ensure_future(peer.first_frame(remaining))
            ended: asyncio.Future[Any] = watch.ended
            done, _ = await asyncio.wait({frame, ended}, return_when=asyncio.FIRST_COMPLETED)
            if ended in done:  # the cloud's reason, even when the peer's end came with it
                if not frame.cancel():
                    frame.exception()  # retrieved: the peer's end says less than the cloud
                raise WatchError(ended.result(), "the session ended before the first frame")
            try:
                frame.result()
            except PeerEndedError as exc:
                reason = exc.end.reason if exc.end is not None else "peer_hangup"
                raise WatchError(reason, str(exc)) from None
            except TimeoutError:
                raise WatchError("timeout", f"no frame within {remaining:g} s") from None
            watch.ttff_s = time.monotonic() - started
            await self._report(watch, reply["ice_servers"], offered_at)
            return watch
        except BaseException:
            await watch.end()
            raise

    async def _report(
        self, watch: Watch, ice_servers: list[dict[str, Any]], offered_at: float
    ) -> None:
        """``session.stats`` once the first frame is decoded (docs/protocol.md, "Session
        statistics"): the selected pair, ``ice_ms`` from the offer to ICE connected and
        ``ttff_ms`` from this session's request to its first frame. aiortc reaches its TURN
        server by the first TURN URL only, so that URL's transport is the protocol of a local
        relay candidate."""
        pair, connected_at = watch.selected_pair(), watch.peer.connected_at
        if pair is None or connected_at is None or watch.ttff_s is None:
            log.warning("session %s: no selected pair to report", watch.session_id)
            return
        urls = [
            url
            for server in ice_servers
            for url in ([server["urls"]] if isinstance(server["urls"], str) else server["urls"])
        ]
        try:
            stats = SessionStats.of_pair(
                watch.session_id,
                pair,
                ice_ms=(connected_at - offered_at) * 1000,
                ttff_ms=watch.ttff_s * 1000,
                relay_node=watch.route == "relay",
                turn=turn_protocol(urls) or "udp",
            )
        except ValueError as exc:
            log.warning("session %s: no stats: %s", watch.session_id, exc)
            return
        watch.stats = stats.dump()
        await self.send(watch.stats)

    async def close(self) -> None:
        for watch in list(self.sessions.values()):
            await watch.end()
        if self.socket is not None:
            await self.socket.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
