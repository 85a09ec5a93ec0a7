"""Clip remuxing cost (relay/clips.py): what a growing event clip costs the relay's CPU.

    .venv/bin/python bench/clips.py [--seconds 30] [--size 1280x720] [--fps 15]
                                    [--kbps 2000] [--every 2] [--repeat 5]

A camera's stream is encoded once up front as the agent does (libx264 Constrained Baseline,
libvpx realtime; a keyframe every 2 s; a moving, textured picture so that the rate holds),
shaped as the fan-out forwards it (Annex B, SPS/PPS ahead of keyframes, pts in 1/90000 s).
Then, CPU time (``time.process_time``, best of ``--repeat``) of:

1. intake: ``ClipMuxer.add`` for every packet of the clip (the growing muxer's work, on the
   event loop), per packet and as a share of one core while the clip grows in real time;
2. the same with an upload's snapshot every ``--every`` s (``BytesIO.getvalue`` shares the
   buffer; the next write copies it), and one snapshot alone;
3. ``finish``: the final file (for H.264 a second remux, into an MP4 whose moov leads);
4. the alternative: remuxing from scratch (``remux``) at every upload, ``--every`` s apart,
   summed over the clip, as a share of one core.
"""

import argparse
import fractions
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/relay.py would shadow the relay package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

from peer.codecs import (  # noqa: E402
    START_CODE,
    ParameterSets,
    is_h264_keyframe,
    is_vp8_keyframe,
    nal_units,
)
from relay.remux import ClipMuxer, Entry, remux  # noqa: E402

CLOCK = 90000


def encode(codec: str, seconds: float, width: int, height: int, fps: int, kbps: int) -> list[Entry]:
    if codec == "h264":
        context = av.CodecContext.create("libx264", "w")
        context.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
    else:
        context = av.CodecContext.create("libvpx", "w")
        context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = fractions.Fraction(1, CLOCK)
    context.framerate = fractions.Fraction(fps)
    context.bit_rate = kbps * 1000
    context.gop_size = 2 * fps
    context.max_b_frames = 0
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, (height // 8 + 1, width // 4 + 1, 3), dtype=np.uint8)
    texture = blocks.repeat(8, axis=0).repeat(8, axis=1)[:height]
    parameter_sets = ParameterSets()
    entries: list[Entry] = []

    def take(packets: list[Any]) -> None:
        for packet in packets:
            data = bytes(packet)
            if codec == "h264":
                data = parameter_sets.complete(b"".join(START_CODE + u for u in nal_units(data)))
                keyframe = is_h264_keyframe(data)
            else:
                keyframe = is_vp8_keyframe(data)
            forwarded = av.Packet(data)
            forwarded.pts = packet.pts
            forwarded.time_base = fractions.Fraction(1, CLOCK)
            entries.append((forwarded, keyframe))

    for n in range(round(seconds * fps)):
        shift = (n * 7) % width
        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(texture[:, shift : shift + width]), format="rgb24"
        ).reformat(format="yuv420p")
        frame.pts = n * CLOCK // fps
        frame.time_base = fractions.Fraction(1, CLOCK)
        take(context.encode(frame))
    take(context.encode(None))
    return entries


def cpu(work: Callable[[], object], repeat: int) -> float:
    """The least CPU seconds ``work`` took in ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times)


def measure(codec: str, entries: list[Entry], args: argparse.Namespace) -> None:
    seconds = len(entries) / args.fps
    kbps = sum(packet.size for packet, _ in entries) * 8 / seconds / 1000
    grown: list[ClipMuxer] = []

    def intake() -> None:
        muxer = ClipMuxer("h264" if codec == "h264" else "vp8")
        for packet, keyframe in entries:
            muxer.add(packet, keyframe)
        grown.append(muxer)

    step = round(args.every * args.fps)

    def intake_and_uploads() -> None:
        muxer = ClipMuxer("h264" if codec == "h264" else "vp8")
        for n, (packet, keyframe) in enumerate(entries, 1):
            muxer.add(packet, keyframe)
            if n % step == 0:
                muxer.snapshot()

    intake_s = cpu(intake, args.repeat)
    uploads_s = cpu(intake_and_uploads, args.repeat)
    muxer = grown[-1]
    snapshot_s = cpu(muxer.snapshot, args.repeat)
    snapshot = muxer.snapshot() or b""
    finishes = []
    for built in grown:
        started = time.process_time()
        final = built.finish()
        finishes.append(time.process_time() - started)
    assert final is not None
    scratch_s = sum(
        cpu(lambda n=n: remux("h264" if codec == "h264" else "vp8", entries[:n]), 1)  # type: ignore[misc]
        for n in range(step, len(entries) + 1, step)
    )
    whole_s = cpu(lambda: remux("h264" if codec == "h264" else "vp8", entries), args.repeat)
    print(
        f"{codec}: {len(entries)} packets, {seconds:.0f} s, {kbps:.0f} kbit/s, "
        f"{args.size} at {args.fps} fps; clip {len(snapshot) / 1e6:.1f} MB, "
        f"final {len(final) / 1e6:.1f} MB"
    )
    print(
        f"  intake (growing muxer)     {intake_s * 1e3:7.1f} ms CPU in all, "
        f"{intake_s / len(entries) * 1e6:5.0f} us a packet, "
        f"{intake_s / seconds * 100:.2f} % of a core"
    )
    print(
        f"  intake + a snapshot every {args.every:g} s {uploads_s * 1e3:5.1f} ms CPU in all, "
        f"{uploads_s / seconds * 100:.2f} % of a core"
    )
    print(f"  one snapshot at {seconds:.0f} s         {snapshot_s * 1e3:7.2f} ms")
    print(
        f"  finish (final file)        {statistics.median(finishes) * 1e3:7.1f} ms "
        f"(median of {len(finishes)})"
    )
    print(f"  one remux from scratch     {whole_s * 1e3:7.1f} ms for the whole clip")
    print(
        f"  remux from scratch every {args.every:g} s: {scratch_s * 1e3:7.1f} ms CPU in all, "
        f"{scratch_s / seconds * 100:.2f} % of a core on average, "
        f"{whole_s / args.every * 100:.2f} % at its end"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--kbps", type=int, default=2000)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    for codec in ("h264", "vp8"):
        entries = encode(codec, args.seconds, width, height, args.fps, args.kbps)
        measure(codec, entries, args)


if __name__ == "__main__":
    main()
