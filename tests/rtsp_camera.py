#!/usr/bin/python3
"""An RTSP IP-camera stand-in: GStreamer's RTSP server on 127.0.0.1 serving live H.264.

Run by Debian's ``/usr/bin/python3`` (``gi`` is not importable in the venv), as a subprocess
of the tests and benchmarks (``tests/rtsp.py``); it imports nothing from the repository.

    /usr/bin/python3 tests/rtsp_camera.py --port 0 --size 1280x720 --fps 15

The first line on stdout is the URL clients open (``rtsp://127.0.0.1:PORT/stream``, without
credentials); nothing else is printed there. It then serves until SIGTERM or SIGINT.

One shared encoder feeds every client (like a camera's substream): a moving test pattern, or
``--image`` (a PNG such as a QR code) over it, encoded by x264 with a fixed GOP, no B-frames and
SPS/PPS repeated before every IDR, so a client that joins late decodes from its first keyframe.
The SDP's profile-level-id is what --profile asks: 42c0xx baseline, 4d40xx main, 6400xx high.
"""

import argparse
import re
import signal
import struct
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

ROLE = "camera-user"
# x264 writes the profile its features need, not the one asked: ultrafast turns CABAC and
# the 8x8 transform off, which comes out as (constrained) baseline. Turn them back on.
OPTIONS = {"baseline": "", "main": ":cabac=1", "high": ":cabac=1:8x8dct=1"}


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError("width and height must be even and at least 16")
    return width, height


def pattern(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9-]+", text):
        raise argparse.ArgumentTypeError(f"not a videotestsrc pattern: {text!r}")
    return text


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    with path.open("rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise SystemExit(f"error: {path} is not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def pipeline(args: argparse.Namespace) -> str:
    """The ``gst-launch`` description of the media: a bin whose payloader is ``pay0``."""
    width, height = args.size
    raw = f"video/x-raw,width={width},height={height},framerate={args.fps}/1"
    source = f"videotestsrc name=camera is-live=true pattern={args.pattern} ! {raw}"
    if args.image is not None:
        image_w, image_h = png_size(args.image)
        if args.image_layout == "fill" or image_w > width or image_h > height:
            scale = min(width / image_w, height / image_h)
            image_w, image_h = int(image_w * scale) // 2 * 2, int(image_h * scale) // 2 * 2
        if args.image_layout == "fill":
            source = f"videotestsrc name=camera is-live=true pattern=black ! {raw}"
        # Location is set on the element (create_element), so no path quoting here.
        source += (
            f" ! videoconvert ! gdkpixbufoverlay name=image"
            f" offset-x={(width - image_w) // 2} offset-y={(height - image_h) // 2}"
            f" overlay-width={image_w} overlay-height={image_h}"
        )
    gop = max(1, round(args.fps * args.keyframe_interval_s))
    # scenecut=0: IDRs only every `gop` frames, a fixed GOP like a camera's. threads=1: one
    # slice per frame (zerolatency's sliced threads give several, and the SPS/PPS put before
    # each IDR slice made FFmpeg's parser split a keyframe in two packets); one core at most.
    # x264 repeats SPS/PPS before every IDR; h264parse config-interval=-1 makes sure of it.
    encoder = (
        f"x264enc tune=zerolatency speed-preset={args.speed_preset} bitrate={args.bitrate_kbps}"
        f" key-int-max={gop} bframes=0 threads=1 aud=false byte-stream=true insert-vui=true"
        f" option-string=scenecut=0{OPTIONS[args.profile]}"
    )
    return (
        f"( {source} ! videoconvert ! video/x-raw,format=I420 ! {encoder}"
        f" ! video/x-h264,profile={args.profile} ! h264parse config-interval=-1"
        f" ! rtph264pay name=pay0 pt=96 )"
    )


class CameraFactory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, description: str, image: Path | None) -> None:
        super().__init__()
        self.description = description
        self.image = image

    def do_create_element(self, url: GstRtsp.RTSPUrl) -> Gst.Element:
        element = Gst.parse_launch(self.description)
        if self.image is not None:
            element.get_by_name("image").set_property("location", str(self.image))
        pad = element.get_by_name("camera").get_static_pad("src")
        pad.add_probe(Gst.PadProbeType.QUERY_UPSTREAM | Gst.PadProbeType.EVENT_UPSTREAM, unseekable)
        return element


def unseekable(pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    """Make the source a live camera that cannot seek.

    videotestsrc says it can seek, so the server would honour each PLAY's ``Range: npt=0-``
    (FFmpeg always sends one) by seeking the shared pipeline back to 0: the encoder restarts
    and every client already watching sees the stream jump. A camera ignores the range.
    """
    if info.type & Gst.PadProbeType.QUERY_UPSTREAM:
        if info.get_query().type == Gst.QueryType.SEEKING:
            return Gst.PadProbeReturn.HANDLED  # left as a new seeking query is: not seekable
    elif info.get_event().type == Gst.EventType.SEEK:
        return Gst.PadProbeReturn.DROP
    return Gst.PadProbeReturn.OK


def authentication(user: str, password: str, method: str) -> GstRtspServer.RTSPAuth:
    """One account, offered with one method: gi sees RTSPAuthMethod as an enum, not flags."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", ROLE)
    if method == "basic":
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
    else:
        auth.add_digest(user, password, token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    return auth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--path", default="/stream")
    parser.add_argument("--size", type=parse_size, default=(1280, 720), help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--bitrate-kbps", type=int, default=2000)
    parser.add_argument("--keyframe-interval-s", type=float, default=2.0, help="the GOP")
    parser.add_argument("--profile", choices=["baseline", "main", "high"], default="main")
    parser.add_argument(
        "--speed-preset", choices=["ultrafast", "superfast", "veryfast"], default="ultrafast"
    )
    parser.add_argument(
        "--pattern",
        type=pattern,
        default="smpte",
        help="videotestsrc pattern: smpte (its noise corner moves and fills the bitrate, like a"
        " real scene) or ball (moving, but ~80 kbit/s whatever the bitrate), snow…",
    )
    parser.add_argument("--image", type=Path, help="a PNG (e.g. a QR code) shown on the picture")
    parser.add_argument(
        "--image-layout",
        choices=["center", "fill"],
        default="center",
        help="center: native size over the pattern; fill: scaled to the frame, on black",
    )
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument(
        "--auth", choices=["basic", "digest"], default="digest", help="how --user must log in"
    )
    args = parser.parse_args()
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password go together")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    if args.image is not None:
        args.image = args.image.resolve()
        if not args.image.is_file():
            parser.error(f"no such image: {args.image}")

    Gst.init(None)
    description = pipeline(args)
    try:  # the media is built when a client comes: fail now rather than answer it 503
        Gst.parse_launch(description)
    except GLib.Error as error:
        raise SystemExit(f"error: {error.message}") from None
    factory = CameraFactory(description, args.image)
    factory.set_shared(True)
    # A camera hands out RTP over TCP (interleaved) or UDP, as the client asks.
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    if args.user is not None:
        server.set_auth(authentication(args.user, args.password, args.auth))
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role(ROLE, "media.factory.access", True)
        permissions.add_permission_for_role(ROLE, "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"error: cannot listen on 127.0.0.1:{args.port}")

    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"rtsp://127.0.0.1:{server.get_bound_port()}{args.path}", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
