"""The receive-only viewer peer: the Python viewer client's, the tests' and the benches'.

It offers, the camera (or a relay node) answers; see :mod:`device_sim.rtc` for what every
peer shares (candidates, watchdog, the ways it ends).

Lost packets are asked for again and the frames that waited behind them decoded at once by
:class:`peer.repair.ReceiverRepair` (its module says what aiortc's receiver lacks).
"""

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import VideoFrame

from device_sim.rtc import InvalidDescription, Peer, PeerEnd, PeerEndedError
from peer.ice import IceServerJson
from peer.repair import ReceiverRepair
from protocol.messages import EndReason

logger = logging.getLogger(__name__)


class ViewerPeer(Peer):
    """A receive-only video viewer (the Python client, tests and benchmarks).

    Decoded frames are consumed as they arrive by a task the peer owns (aiortc queues them
    without bound otherwise); :attr:`frames` counts them and :attr:`last_frame` keeps the
    latest. Lost packets are asked for again and frames that waited behind them decoded at
    once (:attr:`repair`, a :class:`ReceiverRepair`, whose counters say how much it did).
    ``relay_only`` restricts ICE to relay candidates. ``session_id`` only names the peer in
    logs (a random one when omitted). ``on_end`` as for :class:`CameraPeer`.
    """

    _name = "ViewerPeer"

    def __init__(
        self,
        ice_servers: Sequence[IceServerJson],
        *,
        relay_only: bool = False,
        connect_timeout_s: float = 10.0,
        session_id: str | None = None,
        on_end: Callable[[PeerEnd], None] | None = None,
        codecs: Sequence[str] = (),
    ) -> None:
        super().__init__(
            session_id or secrets.token_hex(4),
            ice_servers,
            relay_only=relay_only,
            connect_timeout_s=connect_timeout_s,
            on_end=on_end,
        )
        self.codecs = codecs
        self._frames = 0
        self._first: VideoFrame | None = None
        self._last: VideoFrame | None = None
        self._first_or_end = asyncio.Event()
        self._offered = False
        self.repair: ReceiverRepair | None = None  # the video receiver's, once it exists

    @property
    def frames(self) -> int:
        """Decoded frames received so far."""
        return self._frames

    @property
    def receiver(self) -> RTCRtpReceiver | None:
        """aiortc's video receiver, once :meth:`offer` made it."""
        return next((t.receiver for t in self._pc.getTransceivers() if t.kind == "video"), None)

    @property
    def last_frame(self) -> VideoFrame | None:
        """The latest decoded frame, or ``None`` before the first."""
        return self._last

    async def offer(self) -> str:
        """Create the offer (one receive-only video section); returns its SDP with candidates.

        The connect timeout starts when this returns: the answer and ICE must both complete
        within it. Raises :class:`PeerEndedError` when the peer is closed meanwhile and
        :class:`RuntimeError` when called twice.
        """
        if self._offered:
            raise RuntimeError("offer() was already called")
        self._offered = True
        self._raise_if_closed()
        await self._use_reachable_servers()
        transceiver = self._pc.addTransceiver("video", direction="recvonly")
        if self.codecs:
            available = RTCRtpSender.getCapabilities("video").codecs
            wanted = [m.lower() for m in self.codecs]
            transceiver.setCodecPreferences(
                sorted(
                    (c for c in available if c.mimeType.lower() in wanted),
                    key=lambda c: wanted.index(c.mimeType.lower()),
                )
            )
        try:
            await self._pc.setLocalDescription(await self._pc.createOffer())
        except Exception as exc:
            self._raise_if_closed(exc)
            raise
        self._start_watch()
        return self._pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        """Apply the camera's (or relay's) answer; ignored once the peer is closed.

        Raises :class:`InvalidDescription` when the answer is rejected and
        :class:`RuntimeError` unless called once after :meth:`offer`.
        """
        if not self._offered or self._remote_set:
            raise RuntimeError("accept() needs a single call after offer()")
        if self._closed:
            return
        try:
            await self._set_remote(answer_sdp, "answer")
        except Exception as exc:  # untrusted SDP: aiortc raises assorted errors
            if self._closed:
                return
            raise InvalidDescription(f"the answer was rejected: {exc!r}") from exc

    async def first_frame(self, timeout: float) -> VideoFrame:  # noqa: ASYNC109 (the contract)
        """The first decoded frame, waiting up to ``timeout`` seconds for it.

        Raises :class:`TimeoutError`, or :class:`PeerEndedError` as soon as the peer ends or
        is closed without one.
        """
        if self._first is None:
            try:
                async with asyncio.timeout(timeout):
                    await self._first_or_end.wait()
            except TimeoutError:
                raise TimeoutError(f"no video frame within {timeout:g} s") from None
        if self._first is None:
            raise PeerEndedError(self._end)
        return self._first

    def _connection(self, configuration: RTCConfiguration) -> RTCPeerConnection:
        pc = super()._connection(configuration)
        pc.on("track", self._on_track)
        return pc

    def _finish(self, reason: EndReason, message: str) -> None:
        super()._finish(reason, message)
        self._first_or_end.set()

    async def close(self) -> None:
        self._first_or_end.set()
        await super().close()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "video":
            return
        receiver = self.receiver
        if self.repair is None and receiver is not None and receiver.track is track:
            try:
                self.repair = ReceiverRepair(receiver)  # before media flows (aiortc's receive())
            except RuntimeError as exc:  # aiortc changed: watch as aiortc alone would
                self._log(logging.ERROR, "no loss repair: %s", exc)
            else:
                self._spawn(self.repair.run(), "loss repair")
        self._spawn(self._consume(track), "frames")

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self._log(logging.INFO, "the video track ended after %d frames", self._frames)
                return
            if not isinstance(frame, VideoFrame):
                continue
            self._frames += 1
            self._last = frame
            if self._first is None:
                self._first = frame
                self._first_or_end.set()
                self._log(logging.INFO, "first frame %dx%d", frame.width, frame.height)
