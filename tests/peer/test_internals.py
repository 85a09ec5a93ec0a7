"""The aiortc and aioice internals the code uses are all there, and a missing one is named
at start (peer/internals.py), never found mid-session."""

import importlib
import subprocess
import sys

import aioice.ice
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender

from peer import internals
from peer.network import use_host_addresses
from tests.servers import ROOT


def test_the_pinned_aiortc_and_aioice_have_every_internal_the_code_uses() -> None:
    assert internals.problems() == []
    internals.require()


def test_a_missing_keyframe_request_hook_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a word, today: the relay would stop asking cameras for keyframes."""
    monkeypatch.delattr(RTCRtpReceiver, "_send_rtcp_pli")
    assert any("_send_rtcp_pli" in p and "relay/media.py" in p for p in internals.problems())
    with pytest.raises(RuntimeError, match="_send_rtcp_pli"):
        internals.require()


def test_a_renamed_private_slot_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    init = RTCRtpReceiver.__init__

    def renamed(self: RTCRtpReceiver, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        vars(self)["_RTCRtpReceiver__queue"] = vars(self).pop("_RTCRtpReceiver__decoder_queue")

    monkeypatch.setattr(RTCRtpReceiver, "__init__", renamed)
    assert any("__decoder_queue" in p for p in internals.problems())


def test_a_sender_method_gone_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCRtpSender, "_send_keyframe")
    assert any("_send_keyframe" in p for p in internals.problems())


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        ("aiortc.RTCDtlsTransport", "_send_rtp"),
        ("aioice.ice.StunProtocol", "send_data"),
        ("aiortc.codecs.h264.H264Encoder", "pack"),
    ],
)
def test_a_hook_of_the_relays_send_loop_gone_is_named(
    monkeypatch: pytest.MonkeyPatch, owner: str, name: str
) -> None:
    """relay/sender.py checks these when it installs; process start names them too."""
    module, _, cls = owner.rpartition(".")
    monkeypatch.delattr(getattr(importlib.import_module(module), cls), name)
    assert any(name in p and "relay/sender.py" in p for p in internals.problems())


def test_host_addresses_fail_loudly_without_aioices_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(aioice.ice, "get_host_addresses")
    assert any("get_host_addresses" in p for p in internals.problems())
    with pytest.raises(RuntimeError, match="get_host_addresses"):
        use_host_addresses(["127.0.0.1"])


def test_the_relay_node_refuses_to_start_on_a_changed_aiortc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relay.node import RelayNode

    monkeypatch.delattr(RTCRtpReceiver, "_send_rtcp_pli")
    with pytest.raises(RuntimeError, match="_send_rtcp_pli"):
        RelayNode(None)  # type: ignore[arg-type]  # refused before the settings are read


def test_the_check_runs_where_no_event_loop_is_current() -> None:
    """aiortc's constructors ask for the current loop; the check lends them one (in the full
    suite an earlier test had left none, and every check failed on that, not on aiortc)."""
    code = (
        "import asyncio; asyncio.set_event_loop(None); from peer import internals; "
        "assert internals.problems() == [], internals.problems()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
