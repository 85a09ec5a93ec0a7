"""peer/repair.py's guards; what it repairs is tested end to end in test_lossy_link.py (the
viewer's receiver) and tests/relay/test_media.py (the relay's upstream)."""

import pytest
from aiortc import RTCPeerConnection

from peer.repair import ReceiverRepair


def test_the_repair_refuses_a_receiver_without_the_aiortc_internals_it_uses() -> None:
    """If aiortc changes, the repair says what is missing instead of failing later."""

    class NotAReceiver:
        pass

    with pytest.raises(RuntimeError, match="nack generator"):
        ReceiverRepair(NotAReceiver())  # type: ignore[arg-type]


async def test_a_receiver_is_repaired_once() -> None:
    """A second repair would wrap the first (every NACK and drain twice): it is refused."""
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        ReceiverRepair(receiver)
        with pytest.raises(RuntimeError, match="already has a ReceiverRepair"):
            ReceiverRepair(receiver)
    finally:
        await pc.close()
