"""One camera's video, received once by the relay and sent to many viewers without re-encoding.

The relay is the camera's viewer: one upstream aiortc peer per camera receives its video, and
a :class:`Fanout` answers any number of viewers from it. Each viewer's ``RTCRtpSender`` gets a
:class:`FanoutTrack` whose ``recv()`` returns ``av.Packet`` objects: aiortc sends a packet
without encoding it (``RTCRtpSender._next_encoded_frame`` only packetizes it, ``Vp8Encoder.pack``),
and every viewer is handed the very same packet objects.

Design: forward the camera's encoded frames. aiortc has no API for encoded frames on the
receiving side (aiortc#55, #449, #627: it always decodes), so :meth:`Fanout.attach` taps the
receiver where its jitter buffer hands a complete, depacketized frame to the decoder thread:
the ``put`` of the receiver's private ``_RTCRtpReceiver__decoder_queue`` (a ``queue.Queue`` of
``(codec, JitterFrame)``, called on the event loop by ``RTCRtpReceiver._handle_rtp_packet``).
The tap wraps each frame once in an ``av.Packet`` (``pts`` in 1/90000 s, continuous across
upstream changes), offers it to every viewer track, and passes the frame on to aiortc's
decoder, whose frames feed the analytics tap (:meth:`Fanout.frames`).

The alternative was to decode once (aiortc does it anyway) and encode once per camera with one
shared VP8 encoder. Either way a viewer costs only packetization, SRTP and a UDP send; encoding
once adds a VP8 encode per camera, a second generation of compression and its latency, but
owns its keyframes (a joiner gets one without a round trip to the camera) and needs no
private hook. Measured side by side (``bench/relay.py``, 640x480 at 15 fps, two runs,
docs/benchmarks.md "Relay fan-out"): forwarding costs 0.30-0.44 % of a core per additional
viewer (relay process 2.7-2.8 % with one viewer, 4.8-5.9 % with eight); aiortc's
``MediaRelay`` (one encoder per viewer) 4.2-4.4 % per viewer (37 % with eight); encoding
once about the same per viewer as forwarding but 3-6 % of a core more per camera at every
viewer count. Forwarding is chosen: cheapest, and the picture the camera encoded reaches the
viewers unchanged. Its costs are one private hook (checked by :meth:`Fanout.attach`, which
raises if aiortc changes it) and keyframes that must come from the camera.

Keyframes: a viewer track starts at a keyframe; until then it sends nothing. The fan-out
keeps the upstream's current GOP (:mod:`peer.gop`), and a viewer whose sender starts (its
connection is up), falls more than :data:`VIEWER_QUEUE_FRAMES` behind, or asks for a
keyframe (PLI/FIR, through :func:`serve_viewer`) starts over from it, paced,
without disturbing the camera or the other viewers. Only when no GOP is cached (the upstream
just started) does it ask the camera for a keyframe with an RTCP PLI through the upstream
receiver (``RTCRtpReceiver._send_rtcp_pli``, private; the media SSRC comes from the public
``getSynchronizationSources()``). Requests are coalesced: at most one per
:data:`KEYFRAME_RETRY_S` while no keyframe arrived, re-sent after that if viewers still
wait (a lost PLI). Before the cache, each late joiner's PLI made an IP camera bridged by the
agent resend its GOP to every viewer of the upstream, and the burst pushed them behind.

Codec: whichever the upstream negotiated, VP8 or H.264 (:mod:`peer.codecs`); every viewer
must negotiate the same (the signaling glue answers a viewer that cannot with
``codec_mismatch``). Keyframes are found from the bitstream (VP8's P bit, H.264's IDR NAL
units) and an H.264 keyframe leaves with the stream's SPS/PPS ahead of it, so a viewer
starting there can decode it whatever the camera repeats. Frames of another codec are not
forwarded (logged once).

Threads and loop: everything here runs on the event loop; aiortc's decoder thread is the only
other thread and is fed, not touched.
"""

import asyncio
import contextlib
import fractions
import itertools
import logging
import queue
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Literal

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import VIDEO_CLOCK_RATE, MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import Packet, VideoFrame

from peer.codecs import (
    H264,
    VP8,
    ParameterSets,
    is_h264_keyframe,
    is_vp8_keyframe,
    on_keyframe_request,
)
from peer.gop import Gop, GopTrack
from peer.repair import ReceiverRepair
from relay import sender as sender_loop

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
KEYFRAME_RETRY_S = 1.0  # ask the camera again if no keyframe came within this
VIEWER_QUEUE_FRAMES = 30  # about 2 s at 15 fps: a sender further behind restarts at a keyframe
POLL_S = 1.0  # the longest a wait goes without re-checking that its track or fan-out is live
STALL_WARNING_S = 10.0  # log when the upstream decoded nothing for this long
PLI_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 5.0
UPSTREAM_GAP_PTS = VIDEO_CLOCK_RATE // 30  # between the last frame of an upstream and the next's

_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


class FanoutTrack(GopTrack):
    """One viewer's video track: the camera's encoded frames (see :class:`peer.gop.GopTrack`).

    Add it to the viewer's ``RTCPeerConnection``; the viewer must have negotiated the
    upstream's codec. With no GOP cached to start from, it asks the camera for a keyframe.
    Stopping it unsubscribes it from the fan-out.
    """

    def __init__(self, fanout: "Fanout", name: str) -> None:
        super().__init__(fanout._gop, name, VIEWER_QUEUE_FRAMES)
        self._fanout = fanout

    @property
    def _wants_keyframe(self) -> bool:
        return self._started and self._needs_keyframe

    def _no_gop(self) -> None:
        self._fanout.request_keyframe()

    def _left(self) -> None:
        self._fanout._remove(self)


class Fanout:
    """One camera's video, received once, sent to many viewers as the same encoded packets.

    ``attach(receiver)`` the upstream ``RTCRtpReceiver`` (from the relay's connection to the
    camera), then ``subscribe()`` a track per viewer. ``frames(fps)`` taps the decoded picture
    for analytics. ``close()`` ends every viewer track and tap; the upstream connection stays
    its owner's to close (after ``close()`` nobody drains its decoded frames any more).
    Counters: :attr:`frames_received` and :attr:`keyframes_received` (encoded frames from the
    upstream, each received once whatever the number of viewers), :attr:`keyframe_requests`
    (PLIs sent to the camera).

    ``add_listener(callback)`` hands every forwarded packet to ``callback(packet, keyframe)``
    too (event clips, :mod:`relay.clips`: a :class:`relay.clips.PreRoll` per analysed camera
    holds at least its last 5 s from a keyframe, for a clip's pre-roll; the fan-out's own
    :class:`peer.gop.Gop` holds only the current GOP, to start a joining viewer at once).
    :attr:`codec` is the upstream's codec.
    """

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.frames_received = 0
        self.keyframes_received = 0
        self.keyframe_requests = 0
        self._tracks: list[FanoutTrack] = []
        self._names = itertools.count(1)
        self._receiver: RTCRtpReceiver | None = None
        self._hooked: queue.Queue[Any] | None = None
        self._pts_offset: int | None = None
        self._last_pts = -UPSTREAM_GAP_PTS
        self._asked_at: float | None = None
        self._other_codec_logged = False
        self._codec: Literal["h264", "vp8"] | None = None
        self._listeners: list[list[Callable[[Packet[Any], bool], None]]] = []
        self._parameter_sets = ParameterSets()
        self._gop = Gop()
        self._decoded = 0
        self._latest: VideoFrame | None = None
        self._new_frame = asyncio.Event()
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._drain_task: asyncio.Task[None] | None = None
        self._repair_task: asyncio.Task[None] | None = None
        self.repair: ReceiverRepair | None = None  # the upstream receiver's (attach)

    @property
    def viewers(self) -> int:
        """The number of subscribed viewer tracks."""
        return len(self._tracks)

    @property
    def codec(self) -> Literal["h264", "vp8"] | None:
        """The codec of the packets forwarded last, ``"h264"`` or ``"vp8"``; ``None`` before."""
        return self._codec

    def add_listener(self, callback: Callable[["Packet[Any]", bool], None]) -> Callable[[], None]:
        """Call ``callback(packet, keyframe)`` on the event loop with every packet forwarded
        (the viewers' very objects: read-only; H.264 keyframes with SPS/PPS ahead). It must
        be quick; its exceptions are logged and never break the receive path. Returns the
        function that removes it (idempotent)."""
        entry = [callback]  # its own identity: the same callback may listen twice
        self._listeners.append(entry)

        def remove() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)

        return remove

    @property
    def latest_frame(self) -> VideoFrame | None:
        """The latest decoded frame (read-only), or ``None`` before the first."""
        return self._latest

    def attach(self, receiver: RTCRtpReceiver) -> None:
        """Take the camera's video from ``receiver``, replacing any earlier upstream.

        Call it from the upstream connection's ``track`` event (or once its remote
        description is set: the receiver needs its track), before or after media flows.
        Viewers stay subscribed across upstreams and restart at the new one's first keyframe.
        The receiver gets a :class:`peer.repair.ReceiverRepair` (:attr:`repair`: lost packets
        asked for again, frames that waited behind them forwarded at once), without which a
        lost NACK on the camera's uplink froze every viewer until another packet was lost.
        Raises :class:`RuntimeError` after :meth:`close`, when aiortc's receiver no longer
        has the private decoder queue this hooks, or when another fan-out holds it;
        :class:`ValueError` when the receiver has no video track yet.
        """
        if self._closed:
            raise RuntimeError(f"Fanout({self.device_id}) is closed")
        track = receiver.track
        if track is None or track.kind != "video":
            raise ValueError("attach() needs a video receiver whose track exists")
        decoder_queue = getattr(receiver, _DECODER_QUEUE, None)
        if not isinstance(decoder_queue, queue.Queue):
            raise RuntimeError(f"aiortc's RTCRtpReceiver no longer has {_DECODER_QUEUE}")
        if "put" in vars(decoder_queue):
            raise RuntimeError("this receiver is already attached to a fan-out")
        replacing = self._hooked is not None
        self._detach()
        forward = decoder_queue.put

        def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
            if item is not None:
                try:
                    self._on_encoded_frame(*item)
                except Exception:  # never break aiortc's receive path
                    logger.exception("Fanout(%s) failed to forward a frame", self.device_id)
            forward(item, block, timeout)

        decoder_queue.put = put  # type: ignore[method-assign]
        self._hooked = decoder_queue
        self._receiver = receiver
        self.repair = None
        try:  # its drained frames go through the put above, as aiortc's own do
            self.repair = ReceiverRepair(receiver)
        except RuntimeError as exc:  # aiortc changed: forward as aiortc alone would
            logger.error("Fanout(%s) no loss repair on the upstream: %s", self.device_id, exc)
        else:
            self._repair_task = self._spawn(self.repair.run(), "upstream loss repair")
        self._pts_offset = None
        self._asked_at = None
        self._parameter_sets = ParameterSets()
        self._gop.clear()
        self._drain_task = self._spawn(self._drain(track), "decoded frames")
        logger.info("Fanout(%s) attached to the upstream", self.device_id)
        if replacing:  # the new stream's delta frames mean nothing after the old one's
            for viewer in self._tracks:
                viewer._restart_at_keyframe()
        if any(viewer._wants_keyframe for viewer in self._tracks):
            self.request_keyframe()

    def subscribe(self) -> FanoutTrack:
        """A new viewer track, to add to the viewer's connection (see :class:`FanoutTrack`)."""
        if self._closed:
            raise RuntimeError(f"Fanout({self.device_id}) is closed")
        track = FanoutTrack(self, f"{self.device_id}#{next(self._names)}")
        self._tracks.append(track)
        logger.info(
            "Fanout(%s) viewer %s subscribed (%d)", self.device_id, track.name, self.viewers
        )
        return track

    def unsubscribe(self, track: FanoutTrack) -> None:
        """Stop delivering to ``track`` (its ``recv()`` then ends); idempotent."""
        track.stop()

    def request_keyframe(self) -> None:
        """Ask the camera for a keyframe (PLI), unless one was asked less than 1 s ago."""
        receiver = self._receiver
        now = time.monotonic()
        if receiver is None or self._closed:
            return
        if self._asked_at is not None and now - self._asked_at < KEYFRAME_RETRY_S:
            return
        self._asked_at = now
        self._spawn(self._send_pli(receiver), "PLI")

    def frames(self, fps: float) -> AsyncIterator[VideoFrame]:
        """Decoded frames for analytics, at most ``fps`` per second, the newest each time.

        Frames decoded while the consumer is busy are dropped (only the newest is kept), so a
        slow consumer never slows the viewers or the decoder. The frames are shared: treat
        them as read-only. The iterator ends when the fan-out closes. Raises
        :class:`ValueError` unless ``fps > 0``.
        """
        if not fps > 0:
            raise ValueError("fps must be positive")
        return self._tap(1.0 / fps)

    async def close(self) -> None:
        """End every viewer track and tap, unhook the upstream, cancel tasks; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        for track in list(self._tracks):
            track.stop()
        self._wake()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError:
            logger.warning(
                "Fanout(%s) close did not finish in %s s", self.device_id, CLOSE_TIMEOUT_S
            )
        logger.info("Fanout(%s) closed after %d frames", self.device_id, self.frames_received)

    # the upstream

    def _on_encoded_frame(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        data = frame.data
        if not data:
            return
        mime = codec.mimeType.lower()
        if mime == VP8:
            keyframe = is_vp8_keyframe(data)
            self._codec = "vp8"
        elif mime == H264:
            self._codec = "h264"
            data = self._parameter_sets.complete(data)
            keyframe = is_h264_keyframe(data)
        else:
            if not self._other_codec_logged:
                self._other_codec_logged = True
                logger.error("Fanout(%s) cannot forward %s", self.device_id, codec.mimeType)
            return
        if self._pts_offset is None:  # aiortc counts each upstream's timestamps from 0
            self._pts_offset = self._last_pts + UPSTREAM_GAP_PTS - frame.timestamp
        pts = frame.timestamp + self._pts_offset
        self._last_pts = pts
        packet = Packet(data)
        packet.pts = pts
        packet.time_base = VIDEO_TIME_BASE
        self.frames_received += 1
        self._gop.add(packet, keyframe)
        if keyframe:
            self.keyframes_received += 1
            self._asked_at = None
        for track in self._tracks:
            track._push(packet, keyframe)
        for (listener,) in list(self._listeners):
            try:
                listener(packet, keyframe)
            except Exception:  # a listener never breaks the receive path
                logger.exception("Fanout(%s) packet listener failed", self.device_id)
        if not keyframe and any(track._wants_keyframe for track in self._tracks):
            self.request_keyframe()  # a no-op while a recent request is pending

    async def _send_pli(self, receiver: RTCRtpReceiver) -> None:
        sources = [source.source for source in receiver.getSynchronizationSources()]
        if not sources:  # nothing received yet: the next frame will ask again
            self._asked_at = None
            return
        self.keyframe_requests += 1
        logger.debug("Fanout(%s) PLI to %s", self.device_id, sources)
        try:
            async with asyncio.timeout(PLI_TIMEOUT_S):
                for ssrc in sources:
                    await receiver._send_rtcp_pli(ssrc)
        except TimeoutError:
            logger.warning("Fanout(%s) PLI not sent within %s s", self.device_id, PLI_TIMEOUT_S)

    async def _drain(self, track: MediaStreamTrack) -> None:
        """Consume aiortc's decoded frames (it queues them without bound), keeping the newest."""
        while True:
            try:
                async with asyncio.timeout(STALL_WARNING_S):
                    frame = await track.recv()
            except TimeoutError:
                logger.warning(
                    "Fanout(%s) no decoded frame for %s s", self.device_id, STALL_WARNING_S
                )
                continue
            except MediaStreamError:
                logger.info("Fanout(%s) the upstream ended", self.device_id)
                return
            if isinstance(frame, VideoFrame):
                self._decoded += 1
                self._latest = frame
                self._wake()

    def _detach(self) -> None:
        if self._hooked is not None:
            with contextlib.suppress(AttributeError):
                del self._hooked.put  # back to queue.Queue.put
            self._hooked = None
        self._receiver = None
        if self._drain_task is not None:
            self._drain_task.cancel()  # still in _tasks: close() waits for it
            self._drain_task = None
        if self._repair_task is not None:
            self._repair_task.cancel()  # its receiver is no longer ours to repair
            self._repair_task = None

    # viewers and taps

    def _remove(self, track: FanoutTrack) -> None:
        if track in self._tracks:
            self._tracks.remove(track)
            logger.info(
                "Fanout(%s) viewer %s left after %d packets (%d)",
                self.device_id,
                track.name,
                track.packets,
                self.viewers,
            )

    def _wake(self) -> None:
        self._new_frame.set()
        self._new_frame = asyncio.Event()

    async def _tap(self, interval: float) -> AsyncIterator[VideoFrame]:
        loop = asyncio.get_running_loop()
        seen = self._decoded  # only frames decoded from now on
        due = loop.time()
        while not self._closed:
            if self._decoded == seen:
                event = self._new_frame
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await event.wait()
                continue
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue  # the newest frame by then, if still open
            frame = self._latest
            assert frame is not None
            seen = self._decoded
            due = loop.time() + interval
            yield frame

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=f"Fanout({self.device_id}) {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def serve_viewer(sender: RTCRtpSender, track: FanoutTrack) -> None:
    """Make a viewer's PLI/FIR for ``sender`` (which sends ``track``) restart ``track``, and
    give ``sender`` the relay's cheaper send loop (:mod:`relay.sender`: each H.264 frame
    packetized once for every viewer, the RTP header built once per frame). Call it right
    after ``addTransceiver``, before the connection starts. When aiortc no longer has what
    the send loop uses, the sender keeps aiortc's own (logged as an error)."""
    on_keyframe_request(sender, track.request_keyframe)
    try:
        sender_loop.install(sender)
    except RuntimeError as exc:
        logger.error("Fanout viewer %s keeps aiortc's send loop: %s", track.name, exc)
