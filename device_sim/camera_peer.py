"""The camera's side of a viewing session: answers the viewer's offer and sends the video.

See :mod:`device_sim.rtc` for what every peer shares (candidates, the watchdog and how a
peer ends by itself).
"""

import logging
from collections.abc import Callable, Sequence

from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from device_sim.keyframes import Vp8KeyframeEncoder
from device_sim.media import CameraTrack
from device_sim.rtc import InvalidDescription, Peer, PeerEnd
from device_sim.stream import EncodedTrack
from peer import codecs
from peer.ice import IceServerJson


class VideoUnavailable(RuntimeError):
    """The camera has no picture to send (its video source is down)."""


class CodecMismatch(InvalidDescription):
    """The viewer cannot take the camera's codec (the session ends with ``codec_mismatch``)."""


class CameraPeer(Peer):
    """The camera's side of one viewer session: sends ``track``, receives nothing.

    ``keyframe_interval`` (frames) caps the distance between VP8 keyframes, e.g. 250 for the
    benchmark; by default it is the track's (:class:`~device_sim.media.CameraTrack`, set on
    the source), and ``None`` there too keeps aiortc's 3000. Every session still starts with
    a keyframe and answers PLI/FIR with one (see :mod:`device_sim.media`). aiortc has no API
    to choose the encoder, so :meth:`answer` gives the negotiated sender a
    :class:`~device_sim.keyframes.Vp8KeyframeEncoder` through its private
    ``_RTCRtpSender__encoder`` slot, which aiortc fills lazily only when empty; it does so
    for VP8 only (H.264 keeps aiortc's encoder, with a warning when an
    interval was asked for). ``on_end`` is called once, on the event loop, when the peer
    ends by itself; it must not block.
    """

    _name = "CameraPeer"

    def __init__(
        self,
        session_id: str,
        track: MediaStreamTrack,
        ice_servers: Sequence[IceServerJson],
        *,
        connect_timeout_s: float = 10.0,
        keyframe_interval: int | None = None,
        on_end: Callable[[PeerEnd], None] | None = None,
    ) -> None:
        if keyframe_interval is None and isinstance(track, CameraTrack):
            keyframe_interval = track.keyframe_interval
        if keyframe_interval is not None and keyframe_interval < 1:
            raise ValueError("keyframe_interval must be at least 1 frame")
        super().__init__(
            session_id,
            ice_servers,
            relay_only=False,
            connect_timeout_s=connect_timeout_s,
            on_end=on_end,
        )
        self.keyframe_interval = keyframe_interval
        self._track = track
        self._encoder: Vp8KeyframeEncoder | None = None
        self._answered = False

    @property
    def frames_sent(self) -> int | None:
        """Frames encoded for this session so far (``None`` unless VP8 was negotiated)."""
        return None if self._encoder is None else self._encoder.frames

    @property
    def keyframes_sent(self) -> int | None:
        """Keyframes among them (``None`` unless VP8 was negotiated)."""
        return None if self._encoder is None else self._encoder.keyframes

    async def answer(self, offer_sdp: str) -> str:
        """Answer the viewer's offer; returns the answer SDP with all local candidates.

        The offer must ask to receive video. An :class:`~device_sim.stream.EncodedTrack` is
        sent as it is: the answer names its codec (for H.264 with the stream's
        profile-level-id), and the viewer's keyframe requests reach the track. Raises
        :class:`CodecMismatch` when the offer cannot take that codec,
        :class:`InvalidDescription` when the offer is rejected, :class:`PeerEndedError`
        when the peer is closed meanwhile and :class:`RuntimeError` when called twice. The
        connect timeout starts when this returns.
        """
        if self._answered:
            raise RuntimeError("answer() was already called")
        self._answered = True
        self._raise_if_closed()
        codec = self._track.codec if isinstance(self._track, EncodedTrack) else None
        if isinstance(self._track, EncodedTrack):
            if codec is None:
                raise VideoUnavailable("the camera has no picture from its video source yet")
            try:
                offered = codecs.offered_codecs(offer_sdp)
            except Exception as exc:  # untrusted SDP
                raise InvalidDescription(f"the offer was rejected: {exc!r}") from exc
            if not any(c.takes(codec) for c in offered):
                listed = ", ".join(map(str, offered)) or "none"
                raise CodecMismatch(f"the camera sends {codec}; the viewer takes {listed}")
        await self._use_reachable_servers()
        # Before the offer is set: aiortc picks an answer's codecs from the preferences of
        # the transceiver the offer's video section lands on, there and then.
        video = self._pc.addTransceiver(self._track, direction="sendonly")
        if codec is not None and isinstance(self._track, EncodedTrack):
            codecs.prefer_exactly(self._pc, [codec.capability()])
            codecs.on_keyframe_request(video.sender, self._track.request_keyframe)
        try:
            await self._set_remote(offer_sdp, "offer")
        except Exception as exc:  # untrusted SDP: aiortc raises assorted errors
            self._raise_if_closed(exc)
            raise InvalidDescription(f"the offer was rejected: {exc!r}") from exc
        if video.mid is None:
            raise InvalidDescription("the offer has no video section")
        try:
            await self._pc.setLocalDescription(await self._pc.createAnswer())
        except Exception as exc:
            self._raise_if_closed(exc)
            raise InvalidDescription(f"no answer to this offer: {exc!r}") from exc
        if video.currentDirection not in ("sendonly", "sendrecv"):
            raise InvalidDescription("the offer does not ask to receive video")
        self._install_encoder(video.sender)
        self._start_watch()
        sdp: str = self._pc.localDescription.sdp
        return sdp if codec is None else codecs.with_profile_level_id(sdp, codec)

    def _install_encoder(self, sender: RTCRtpSender) -> None:
        description = SessionDescription.parse(self._pc.localDescription.sdp)
        media = next(m for m in description.media if m.kind == "video")
        mime = media.rtp.codecs[0].mimeType.lower() if media.rtp.codecs else "none"
        if isinstance(self._track, EncodedTrack):
            return  # encoded once, by its source
        if mime != "video/vp8":
            if self.keyframe_interval is not None:
                self._log(logging.WARNING, "keyframe_interval ignored: negotiated %s", mime)
            return
        if getattr(sender, "_RTCRtpSender__encoder", ...) is not None:
            raise RuntimeError("aiortc's RTCRtpSender no longer has an empty __encoder slot")
        self._encoder = Vp8KeyframeEncoder(self.keyframe_interval)
        setattr(sender, "_RTCRtpSender__encoder", self._encoder)  # noqa: B010 (name-mangled)
