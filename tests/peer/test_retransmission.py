"""peer/retransmission.py: the aiortc sender's retransmission history, and its guard."""

import subprocess
import sys
import types

import pytest

from peer.retransmission import HISTORY_NAME, RTP_HISTORY_PACKETS, raise_history


def fake_aiortc(**globals_: object) -> types.ModuleType:
    module = types.ModuleType("aiortc.rtcrtpsender")
    for name, value in globals_.items():
        setattr(module, name, value)
    return module


def test_the_history_is_raised_and_never_lowered() -> None:
    module = fake_aiortc(RTP_HISTORY_SIZE=128)
    assert raise_history(1024, module) == 1024
    assert vars(module)["RTP_HISTORY_SIZE"] == 1024
    vars(module)["RTP_HISTORY_SIZE"] = 4096
    assert raise_history(1024, module) == 4096
    assert vars(module)["RTP_HISTORY_SIZE"] == 4096
    with pytest.raises(ValueError, match="positive"):
        raise_history(0, module)


@pytest.mark.parametrize("globals_", [{}, {"RTP_HISTORY_SIZE": "128"}, {"RTP_HISTORY_SIZE": True}])
def test_an_aiortc_without_the_int_it_reads_is_refused_by_name(globals_: dict[str, object]) -> None:
    """A renamed or retyped global would make the raise a silent no-op: it is an error."""
    module = fake_aiortc(**globals_)
    with pytest.raises(RuntimeError, match=HISTORY_NAME.replace(".", r"\.")):
        raise_history(1024, module)
    assert getattr(module, "RTP_HISTORY_SIZE", None) == globals_.get("RTP_HISTORY_SIZE")


def test_every_process_that_sends_a_gop_track_has_the_raised_history() -> None:
    """peer/gop.py raises it on import (the relay's fan-out and the agent's streams send
    GopTracks); checked in a fresh interpreter, where nothing else could have set it."""
    code = (
        "import aiortc.rtcrtpsender as s; before = s.RTP_HISTORY_SIZE; import peer.gop; "
        "print(before, s.RTP_HISTORY_SIZE)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["128", str(RTP_HISTORY_PACKETS)]
