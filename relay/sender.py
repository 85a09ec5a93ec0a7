"""A cheaper RTP send loop for the fan-out's viewer senders (aiortc 1.16.0, pinned for it).

A relay viewer costs what sending its copy of the camera's packets costs. Profiled in the
relay process of ``bench/relay.py`` (H.264 1280x720@15, 2 Mbit/s, 32 viewers, cProfile of
the event loop; docs/benchmarks.md "Relay fan-out of H.264"), aiortc's per-packet path
(``RTCRtpSender._run_rtp``) spends its time, per packet and per viewer, on: an ``RtpPacket``
object, two NTP clock readings through ``datetime`` (``clock.current_ntp_time``), the header
extensions packed from scratch (``HeaderExtensionsMap.set``, ``pack_header_extensions``),
``RtpPacket.serialize``, the H.264 access unit split and packetized again for every viewer
(``H264Encoder.pack``), then SRTP and the UDP send. Only the last two are the work itself.

:func:`install` gives one viewer's ``RTCRtpSender`` a send loop of its own, which:

- packetizes each H.264 frame once for all viewers (:func:`shared_payloads`: the fan-out
  hands every viewer the very same ``av.Packet``, and H.264 packetization depends on nothing
  else; VP8 is packed per viewer as aiortc does, its payload descriptor carries a picture id
  that each sender counts on its own);
- builds the RTP header once per frame with aiortc's own serializer (mid and abs-send-time
  extensions as negotiated) and, per packet, patches only the marker bit and the sequence
  number into it; abs-send-time is the frame's (its packets leave back to back, microseconds
  apart, within one 5 ms packet group of the receiver's estimator);
- sends each frame's packets without a coroutine each: the DTLS transport's SRTP ``protect``
  and the nominated ICE pair's datagram ``sendto`` resolved once per frame, which is what
  ``RTCDtlsTransport._send_rtp`` -> ``Connection.send`` -> ``StunProtocol.send_data`` do per
  packet (the transport's sent counters kept too); any other pair, or a transport not
  connected, goes aiortc's way;
- keeps the sender's retransmission history as the unencrypted packet bytes, and answers a
  NACK from it with aiortc's own RTX wrapping (``wrap_rtx``) as aiortc would;
- keeps the sender report's counters (packets, octets, the NTP/RTP timestamp pair) current
  once per frame, so aiortc's RTCP loop and ``getStats`` say what was sent.

What it reaches into, all checked by :func:`install` (which raises :class:`RuntimeError`
naming what is missing, and ``tests/relay/test_sender.py`` fails loudly when aiortc changes
under it): the sender's ``_run_rtp`` and ``_retransmit`` (replaced on the instance, before
``send()`` starts them), the name-mangled ``__rtp_started``/``__rtp_exited`` events that
``stop()`` waits on, ``__mid``, ``__rtp_header_extensions_map``, ``__rtx_payload_type`` and the
report counters ``__ntp_timestamp``, ``__rtp_timestamp``, ``__octet_count``,
``__packet_count``; the DTLS transport's ``_send_rtp``, ``_state``, ``_tx_srtp`` and its
``__tx_bytes``/``__tx_packets``; its ICE transport's aioice ``Connection._nominated`` (whose
pairs' ``StunProtocol.transport.sendto`` is the datagram send, as aioice 0.13.0 does it);
``aiortc.rtcrtpsender.RTP_HISTORY_SIZE`` (read once per frame, as aiortc reads it per packet, so
:mod:`peer.retransmission` still governs it).
"""

import asyncio
import logging
import random
from collections.abc import Callable
from struct import pack
from typing import Any

import aioice.ice
import aiortc.rtcrtpsender
from aiortc import RTCRtpSender, clock
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket, wrap_rtx
from aiortc.utils import random32
from av import Packet

from peer import retransmission
from peer.codecs import H264
from peer.internals import SEND_LOOP_SLOTS  # set by RTCRtpSender.__init__ (aiortc 1.16.0)

logger = logging.getLogger(__name__)

SHARED_FRAMES = 64  # frames whose H.264 packets are kept for the viewers still to send them

_SENDER = "_RTCRtpSender__"
_SENDER_METHODS = ("_run_rtp", "_retransmit")
_DTLS = "_RTCDtlsTransport__"
_DTLS_PRIVATE = ("_tx_srtp", "_state", _DTLS + "tx_bytes", _DTLS + "tx_packets")
_INSTALLED = "_visionconnect_fast_send"

_shared: dict[int, tuple["Packet[Any]", list[bytes], int]] = {}


def check(sender: RTCRtpSender) -> None:
    """Raise :class:`RuntimeError` unless ``sender`` (not yet sending) has every aiortc
    internal :func:`install` uses."""
    missing = [name for name in _SENDER_METHODS if not callable(getattr(sender, name, None))]
    missing += [_SENDER + name for name in SEND_LOOP_SLOTS if not hasattr(sender, _SENDER + name)]
    for name in ("rtp_started", "rtp_exited"):
        if not isinstance(getattr(sender, _SENDER + name, None), asyncio.Event):
            missing.append(f"{_SENDER}{name} (an asyncio.Event)")
    dtls = sender.transport
    if not callable(getattr(dtls, "_send_rtp", None)):
        missing.append("RTCDtlsTransport._send_rtp")
    missing += [f"RTCDtlsTransport.{name}" for name in _DTLS_PRIVATE if not hasattr(dtls, name)]
    connection = getattr(dtls.transport, "_connection", None)
    if not isinstance(getattr(connection, "_nominated", None), dict):
        missing.append("RTCIceTransport._connection._nominated (aioice, a dict)")
    if not callable(getattr(aioice.ice.StunProtocol, "send_data", None)):
        missing.append("aioice.ice.StunProtocol.send_data")
    if type(getattr(aiortc.rtcrtpsender, "RTP_HISTORY_SIZE", None)) is not int:
        missing.append("aiortc.rtcrtpsender.RTP_HISTORY_SIZE (an int)")
    if not callable(vars(H264Encoder).get("pack")):  # its own, not the base class's
        missing.append("H264Encoder.pack")
    if missing:
        raise RuntimeError(
            "aiortc changed: the relay's send loop (relay/sender.py) needs "
            + ", ".join(sorted(set(missing)))
        )
    if getattr(sender, _SENDER + "rtp_task", None) is not None:
        raise RuntimeError("the sender already sends: install() before its connection starts")


def install(sender: RTCRtpSender) -> "FastSend":
    """Give ``sender`` (a viewer's, sending a fan-out's encoded packets) the send loop of
    this module; call it before its connection starts (right after ``addTransceiver``).
    Idempotent. Raises :class:`RuntimeError` when aiortc no longer has what it uses."""
    installed = vars(sender).get(_INSTALLED)
    if isinstance(installed, FastSend):
        return installed
    check(sender)
    fast = FastSend(sender)
    setattr(sender, _INSTALLED, fast)
    setattr(sender, "_run_rtp", fast.run)  # noqa: B010 (replaces a method on the instance)
    setattr(sender, "_retransmit", fast.retransmit)  # noqa: B010
    return fast


def shared_payloads(packet: "Packet[Any]") -> tuple[list[bytes], int]:
    """``H264Encoder.pack(packet)``, computed once per packet object for every viewer.

    The fan-out hands all viewers the same objects (read-only), a few milliseconds apart;
    the last :data:`SHARED_FRAMES` are kept, with the packet itself so its id stays its own.
    """
    key = id(packet)
    hit = _shared.get(key)
    if hit is not None and hit[0] is packet:
        return hit[1], hit[2]
    payloads, timestamp = H264Encoder().pack(packet)
    _shared[key] = (packet, payloads, timestamp)
    if len(_shared) > SHARED_FRAMES:
        del _shared[next(iter(_shared))]
    return payloads, timestamp


class FastSend:
    """One viewer sender's send loop and retransmission history (see the module docstring).

    :attr:`packets` and :attr:`frames` count what it sent (:attr:`direct_frames` the frames
    sent straight to the ICE pair's socket, see :meth:`_udp`), :attr:`retransmissions` the
    NACKed packets it sent again.
    """

    def __init__(self, sender: RTCRtpSender) -> None:
        self.sender = sender
        self.frames = 0
        self.packets = 0
        self.direct_frames = 0
        self.retransmissions = 0
        self._history: dict[int, tuple[int, bytes]] = {}
        self._rtx_sequence_number = random.getrandbits(15)
        self._vp8: Encoder | None = None

    def _private(self, name: str) -> Any:
        return getattr(self.sender, _SENDER + name)

    def _set_private(self, name: str, value: Any) -> None:
        setattr(self.sender, _SENDER + name, value)

    async def run(self, codec: RTCRtpCodecParameters) -> None:
        """Replaces ``RTCRtpSender._run_rtp``: the same contract (started/exited events, the
        track stopped at the end), the per-packet work cut down."""
        sender = self.sender
        self._private("rtp_started").set()
        sequence_number = random.getrandbits(15)  # aiortc's: below 2^15, see its comment
        timestamp_origin = random32()
        extensions_map = self._private("rtp_header_extensions_map")
        mid = self._private("mid")
        h264 = codec.mimeType.lower() == H264
        try:
            while True:
                track = sender.track
                if track is None:
                    await asyncio.sleep(0.02)
                    continue
                data = await track.recv()
                if not sender._enabled:
                    continue
                if not isinstance(data, Packet):
                    raise TypeError(f"relay/sender.py sends encoded packets, not {type(data)}")
                if h264:
                    payloads, frame_timestamp = shared_payloads(data)
                else:
                    payloads, frame_timestamp = self._pack(codec, data)
                if not payloads:
                    continue
                timestamp = (timestamp_origin + frame_timestamp) & 0xFFFFFFFF
                ntp = clock.current_ntp_time()
                template = RtpPacket(payload_type=codec.payloadType or 0, timestamp=timestamp)
                template.ssrc = sender._ssrc
                template.extensions.abs_send_time = (ntp >> 14) & 0x00FFFFFF
                template.extensions.mid = mid
                header = template.serialize(extensions_map)
                first, second, rest = header[0], header[1], header[4:]
                last = len(payloads) - 1
                history = self._history
                size = retransmission.history_packets()
                octets = 0
                udp = self._udp()
                if udp is not None:  # the frame's packets leave without a coroutine each
                    protect, sendto, address = udp
                    sent = 0
                    for i, payload in enumerate(payloads):
                        marked = second | 0x80 if i == last else second
                        packet = pack("!BBH", first, marked, sequence_number) + rest + payload
                        history[sequence_number % size] = (sequence_number, packet)
                        protected = protect(packet)
                        sendto(protected, address)
                        sent += len(protected)
                        octets += len(payload)
                        sequence_number = (sequence_number + 1) & 0xFFFF
                    self._count_transport(sent, len(payloads))
                    self.direct_frames += 1
                else:  # as aiortc sends (checks, SRTP, ICE), a packet at a time
                    send_rtp: Callable[[bytes], Any] = sender.transport._send_rtp
                    for i, payload in enumerate(payloads):
                        marked = second | 0x80 if i == last else second
                        packet = pack("!BBH", first, marked, sequence_number) + rest + payload
                        history[sequence_number % size] = (sequence_number, packet)
                        await send_rtp(packet)
                        octets += len(payload)
                        sequence_number = (sequence_number + 1) & 0xFFFF
                self.frames += 1
                self.packets += len(payloads)
                self._set_private("ntp_timestamp", ntp)
                self._set_private("rtp_timestamp", timestamp)
                self._set_private("octet_count", self._private("octet_count") + octets)
                self._set_private("packet_count", self._private("packet_count") + len(payloads))
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:  # as aiortc: __rtp_exited must be set, or stop() hangs
            logger.exception("relay send loop failed")
        track = sender.track
        if track is not None:
            track.stop()
        self._private("rtp_exited").set()

    async def retransmit(self, sequence_number: int) -> None:
        """Replaces ``RTCRtpSender._retransmit``: a NACKed packet sent again from the history,
        wrapped in RTX when negotiated, as aiortc does."""
        entry = self._history.get(sequence_number % retransmission.history_packets())
        if entry is None or entry[0] != sequence_number:
            return
        extensions_map = self._private("rtp_header_extensions_map")
        packet = RtpPacket.parse(entry[1], extensions_map)
        rtx_payload_type = self._private("rtx_payload_type")
        if rtx_payload_type is not None:
            packet = wrap_rtx(
                packet,
                payload_type=rtx_payload_type,
                sequence_number=self._rtx_sequence_number,
                ssrc=self.sender._rtx_ssrc,
            )
            self._rtx_sequence_number = (self._rtx_sequence_number + 1) & 0xFFFF
        self.retransmissions += 1
        await self.sender.transport._send_rtp(packet.serialize(extensions_map))

    def _udp(
        self,
    ) -> tuple[Callable[[bytes], bytes], Callable[[bytes, Any], None], Any] | None:
        """What ``RTCDtlsTransport._send_rtp`` would do for each packet, resolved once per
        frame: the transport's SRTP ``protect`` and the nominated ICE pair's datagram
        ``sendto`` and address (``StunProtocol.send_data``, a coroutine around that call).
        ``None`` when the transport is not connected or the pair is not a plain
        ``StunProtocol`` one: then the frame goes aiortc's way, which raises as aiortc does."""
        dtls = self.sender.transport
        if dtls._state != State.CONNECTED:
            return None
        nominated = getattr(dtls.transport._connection, "_nominated", None)
        pair = nominated.get(1) if isinstance(nominated, dict) else None
        if pair is None or type(pair.protocol) is not aioice.ice.StunProtocol:
            return None
        udp = pair.protocol.transport
        if udp is None:
            return None
        return dtls._tx_srtp.protect, udp.sendto, pair.remote_addr

    def _count_transport(self, octets: int, packets: int) -> None:
        """The transport's sent counters (its getStats), as ``_send_rtp`` keeps them."""
        dtls = self.sender.transport
        setattr(dtls, _DTLS + "tx_bytes", getattr(dtls, _DTLS + "tx_bytes") + octets)
        setattr(dtls, _DTLS + "tx_packets", getattr(dtls, _DTLS + "tx_packets") + packets)

    def _pack(self, codec: RTCRtpCodecParameters, data: "Packet[Any]") -> tuple[list[bytes], int]:
        if self._vp8 is None:
            self._vp8 = get_encoder(codec)
        payloads, timestamp = self._vp8.pack(data)
        return payloads, timestamp
