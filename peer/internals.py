"""Every private internal of aiortc and aioice that this code base uses, checked in one place.

aiortc and aioice are pinned exactly in pyproject.toml because the code reaches into their
internals. Each use guards itself where it installs its hook (peer/repair.py,
peer/retransmission.py, peer/codecs.py, relay/sender.py, device_sim/camera_peer.py), but some
hooks are only reached mid-session, where a missing one would fail late or quietly (a relay
that can no longer ask a camera for a keyframe says nothing). :func:`require` checks them all
against real aiortc objects at process start: the relay node and the camera agent call it
before they connect, and tests/peer/test_internals.py runs it, so a changed library fails at
start or in a test, naming what is gone.
"""

import asyncio
import inspect
from typing import Any

import aioice
import aioice.ice
import aiortc.codecs
import aiortc.rtcrtpsender
from aiortc import RTCDtlsTransport, RTCIceTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs.h264 import H264Encoder
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import NackGenerator

# Set by RTCRtpReceiver.__init__ (aiortc 1.16.0), name-mangled: who reads them.
RECEIVER_SLOTS = {
    "_RTCRtpReceiver__nack_generator": "peer/repair.py",
    "_RTCRtpReceiver__jitter_buffer": "peer/repair.py",
    "_RTCRtpReceiver__decoder_queue": "peer/repair.py, relay/media.py",
    "_RTCRtpReceiver__decoder_thread": "peer/repair.py",
    "_RTCRtpReceiver__timestamp_mapper": "peer/repair.py",
    "_RTCRtpReceiver__codecs": "peer/repair.py",
}
RECEIVER_METHODS = {
    "_handle_rtp_packet": "peer/repair.py",
    "_send_rtcp_nack": "peer/repair.py",
    "_send_rtcp_pli": "peer/repair.py, relay/media.py (keyframe requests to cameras)",
}
# What relay/sender.py's send loop reads and writes of RTCRtpSender (it checks them itself
# when it installs, from this list).
SEND_LOOP_SLOTS = (
    "rtp_started",
    "rtp_exited",
    "mid",
    "rtp_header_extensions_map",
    "rtx_payload_type",
    "ntp_timestamp",
    "rtp_timestamp",
    "octet_count",
    "packet_count",
)
SENDER_SLOTS = {
    "_RTCRtpSender__encoder": "device_sim/camera_peer.py",  # None until aiortc fills it
    **{f"_RTCRtpSender__{name}": "relay/sender.py" for name in (*SEND_LOOP_SLOTS, "rtp_task")},
}
SENDER_METHODS = {
    "_send_keyframe": "peer/codecs.py",
    "_run_rtp": "relay/sender.py",
    "_retransmit": "relay/sender.py",
}


class _Transport:
    """Enough of an RTCDtlsTransport for aiortc's sender and receiver constructors."""

    state = "new"
    transport = None

    def _register_rtp_receiver(self, *args: Any) -> None:
        pass

    def _register_rtp_sender(self, *args: Any) -> None:
        pass


def problems() -> list[str]:
    """What is missing or changed, as ``"<internal> (<who uses it>)"``; empty when all is well."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # aiortc's constructors take the current loop: lend them one
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(_in_a_loop())
        finally:
            loop.close()
    return _problems()


async def _in_a_loop() -> list[str]:
    return _problems()


def _problems() -> list[str]:
    found: list[str] = []
    transport: Any = _Transport()
    receiver = RTCRtpReceiver("video", transport)
    for name, user in RECEIVER_SLOTS.items():
        if name not in vars(receiver):
            found.append(f"RTCRtpReceiver.{name} ({user})")
    for name, user in RECEIVER_METHODS.items():
        if not callable(getattr(RTCRtpReceiver, name, None)):
            found.append(f"RTCRtpReceiver.{name} ({user})")
    if not inspect.iscoroutinefunction(getattr(RTCRtpReceiver, "_send_rtcp_pli", None)):
        found.append("RTCRtpReceiver._send_rtcp_pli as a coroutine function (relay/media.py)")
    if not isinstance(vars(receiver).get("_RTCRtpReceiver__nack_generator"), NackGenerator):
        found.append("RTCRtpReceiver.__nack_generator as a NackGenerator (peer/repair.py)")
    if not isinstance(vars(receiver).get("_RTCRtpReceiver__jitter_buffer"), JitterBuffer):
        found.append("RTCRtpReceiver.__jitter_buffer as a JitterBuffer (peer/repair.py)")
    if not callable(getattr(JitterBuffer, "_remove_frame", None)):
        found.append("JitterBuffer._remove_frame (peer/repair.py)")
    queue = vars(receiver).get("_RTCRtpReceiver__decoder_queue")
    if not callable(getattr(queue, "put", None)):
        found.append("RTCRtpReceiver.__decoder_queue with put() (peer/repair.py, relay/media.py)")
    sender = RTCRtpSender("video", transport)
    for name, user in SENDER_SLOTS.items():
        if name not in vars(sender):
            found.append(f"RTCRtpSender.{name} ({user})")
    if vars(sender).get("_RTCRtpSender__encoder", ...) is not None:
        found.append("RTCRtpSender.__encoder empty until aiortc fills it (device_sim/camera_peer)")
    for name, user in SENDER_METHODS.items():
        if not callable(getattr(RTCRtpSender, name, None)):
            found.append(f"RTCRtpSender.{name} ({user})")
    for event in ("_RTCRtpSender__rtp_started", "_RTCRtpSender__rtp_exited"):
        if not isinstance(vars(sender).get(event), asyncio.Event):
            found.append(f"RTCRtpSender.{event} as an asyncio.Event (relay/sender.py)")
    # relay/sender.py sends each packet itself: SRTP from the DTLS transport, then aioice.
    if not callable(getattr(RTCDtlsTransport, "_send_rtp", None)):
        found.append("RTCDtlsTransport._send_rtp (relay/sender.py)")
    dtls_source = inspect.getsource(RTCDtlsTransport)  # _tx_srtp is set in start()
    for name in ("_tx_srtp", "_state", "__tx_bytes", "__tx_packets"):
        if f"self.{name} =" not in dtls_source:
            found.append(f"RTCDtlsTransport.{name} (relay/sender.py)")
    if not callable(getattr(aioice.ice.StunProtocol, "send_data", None)):
        found.append("aioice.ice.StunProtocol.send_data (relay/sender.py)")
    if not callable(vars(H264Encoder).get("pack")):  # its own, not the base class's
        found.append("H264Encoder.pack (relay/sender.py)")
    if type(getattr(aiortc.rtcrtpsender, "RTP_HISTORY_SIZE", None)) is not int:
        found.append("aiortc.rtcrtpsender.RTP_HISTORY_SIZE as an int (peer/retransmission.py)")
    table = getattr(aiortc.codecs, "CODECS", None)
    if not isinstance(table, dict) or not isinstance(table.get("video"), list):
        found.append("aiortc.codecs.CODECS as a table of codecs by kind (peer/codecs.py)")
    # aioice: host candidates come from this module function (peer/network.py replaces it).
    if not callable(getattr(aioice.ice, "get_host_addresses", None)):
        found.append("aioice.ice.get_host_addresses (peer/network.py)")
    elif "get_host_addresses" not in inspect.getsource(aioice.ice.Connection.gather_candidates):
        found.append("aioice's gather_candidates calling get_host_addresses (peer/network.py)")
    connection = aioice.Connection(ice_controlling=True)
    if not isinstance(vars(connection).get("_nominated"), dict):
        found.append("aioice.Connection._nominated as a dict (device_sim/rtc.py)")
    if "_connection" not in inspect.getsource(RTCIceTransport.__init__):
        found.append("RTCIceTransport._connection (device_sim/rtc.py)")
    return found


def require() -> None:
    """Raise :class:`RuntimeError` naming every internal :func:`problems` finds missing."""
    missing = problems()
    if missing:
        raise RuntimeError(
            f"aiortc {aiortc.__version__} / aioice {aioice.__version__} changed; this code"
            " (pinned to pyproject.toml's versions) uses: " + "; ".join(missing)
        )
