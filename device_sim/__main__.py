"""``python -m device_sim``: the camera simulator's command line.

onboard --scan SOURCE | --qr FILE.png | --payload TEXT
                                           read the QR code, make a key, activate, save
                                           state (0600)
run [--state FILE] [--source SOURCE]       stay online and answer viewers with the video of
                                           SOURCE: synthetic, rtsp://…, /dev/videoN, a file
fleet --count N --cloud URL --email E ...  N cameras in one process, for load tests
discover [--timeout S] [--address HOST[:PORT]] [--interface IP] [--user U --password P] [--json]
                                           list the ONVIF cameras on the LAN (WS-Discovery)
                                           and, with credentials, their RTSP stream URIs
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from device_sim import discover
from device_sim.camera import Camera
from device_sim.onboarding import OnboardingError, activate, read_qr, scan_qr
from device_sim.state import CameraState, StateError
from protocol.errors import ProtocolError
from protocol.logs import configure
from protocol.qr import decode_qr_payload

log = logging.getLogger("device_sim")


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: the process finishes its work and exits cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _network() -> None:
    from peer.network import host_addresses_from_env, use_host_addresses

    addresses = host_addresses_from_env(os.environ)
    if addresses:
        use_host_addresses(addresses)


def _video(args: argparse.Namespace) -> Any:
    """The camera's video source (``None`` with ``--no-video``); raises SourceError."""
    if args.no_video:
        return None
    _network()
    from device_sim.media import SyntheticVideo
    from device_sim.sources import open_source

    width, height = (int(v) for v in args.size.split("x"))
    episodes = [tuple(float(x) for x in m.split(":")) for m in args.motion]
    return open_source(
        args.source,
        synthetic=lambda: SyntheticVideo(width=width, height=height, fps=args.fps, motion=episodes),
        codec=args.codec,
        keyframe_interval=args.keyframe_interval or max(1, round(2 * args.fps)),
        bitrate_kbps=args.bitrate_kbps,
    )


def _motion(video: Any) -> Callable[[], bool] | None:
    """The camera's own motion detection: the synthetic scene knows its motion episodes; a
    bridged camera's own detection (ONVIF events) is not read, so it reports none."""
    from device_sim.media import SyntheticVideo

    pictures = getattr(video, "pictures", None)
    if isinstance(pictures, SyntheticVideo):
        return lambda: pictures.in_motion(pictures.elapsed())
    return None


async def onboard(args: argparse.Namespace) -> int:
    from device_sim.redaction import redact

    try:
        if args.scan:
            print(
                f"show the onboarding QR code to the camera ({redact(args.scan)}) …",
                file=sys.stderr,
                flush=True,
            )
            payload = await asyncio.to_thread(scan_qr, args.scan, args.scan_timeout)
        elif args.qr:
            payload = read_qr(Path(args.qr))
        else:
            payload = decode_qr_payload(args.payload)
        state = await activate(payload, device_uid=args.uid, firmware_version=args.firmware)
    except (OnboardingError, ProtocolError) as exc:
        print(f"onboarding failed: {exc}", file=sys.stderr)
        return 1
    if args.scan and args.scan.startswith(("rtsp://", "rtsps://", "/")):
        state = state.with_source(args.scan)  # run bridges the source it was onboarded with
    state.save(Path(args.state))
    # The Wi-Fi credentials are the camera's own business: joining the network is simulated.
    print(
        json.dumps(
            {"device_id": state.device_id, "device_name": state.device_name, "state": args.state}
        )
    )
    return 0


async def run(args: argparse.Namespace) -> int:
    from device_sim.sources import SourceError

    try:
        state = CameraState.load(Path(args.state))
        if args.source is None:
            args.source = state.source_url() or "synthetic"
        video = _video(args)
    except (StateError, SourceError) as exc:
        print(exc, file=sys.stderr)
        return 1
    camera = Camera(state, video, motion=_motion(video), connect_timeout_s=args.connect_timeout)
    stop = _stop_event()
    print(
        f"camera {state.device_id} ({state.device_name}) connecting to {state.signaling_url}",
        flush=True,
    )
    if video is not None:
        print(f"video: {video.description}", flush=True)
        await video.start()
    try:
        await camera.run(stop)
    finally:
        if video is not None:
            await video.close()
    print(f"camera stopped: {camera.stats}", flush=True)
    return 3 if camera.removed else 0


def _saved_states(directory: Path, count: int) -> list[CameraState]:
    return [CameraState.load(p) for p in sorted(directory.glob("camera-*.json"))][:count]


async def _fleet_states(args: argparse.Namespace) -> list[CameraState]:
    """Reuse saved cameras from --state-dir, onboarding the missing ones with the account."""
    directory = Path(args.state_dir)
    states = _saved_states(directory, args.count)
    missing = args.count - len(states)
    if missing <= 0:
        return states
    async with httpx.AsyncClient(base_url=args.cloud, timeout=30) as http:
        login = await http.post(
            "/api/v1/auth/login", json={"email": args.email, "password": args.password}
        )
        if login.status_code != 200:
            raise OnboardingError(f"login failed ({login.status_code}): {login.text[:200]}")
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        for n in range(len(states), args.count):
            ticket = await http.post(
                "/api/v1/onboarding",
                json={
                    "device_name": f"Fleet {n:05d}",
                    "camera_model": "SIM-1",
                    "wifi_ssid": "fleet",
                    "wifi_password": "",
                },
                headers=headers,
            )
            if ticket.status_code != 201:
                raise OnboardingError(
                    f"onboarding code refused ({ticket.status_code}): {ticket.text[:200]}"
                )
            state = await activate(decode_qr_payload(ticket.json()["payload"]), http=http)
            state.save(directory / f"camera-{n:05d}.json")
            states.append(state)
            _progress("onboarded", len(states), args.count)
    print(file=sys.stderr)
    return states


def _progress(what: str, done: int, total: int) -> None:
    width = 30
    filled = int(width * done / max(1, total))
    print(
        f"\r{what:>10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
        end="",
        file=sys.stderr,
        flush=True,
    )


async def fleet(args: argparse.Namespace) -> int:
    try:
        states = await _fleet_states(args)
    except (OnboardingError, StateError, httpx.HTTPError) as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 1
    video = _video(args) if args.video else None  # synthetic
    if video is not None:
        await video.start()
    cameras = [Camera(s, video) for s in states]
    stop = _stop_event()
    started = time.monotonic()
    tasks = []
    for i, camera in enumerate(cameras):  # ramp up: do not stampede the cloud
        tasks.append(asyncio.create_task(camera.run(stop)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    deadline = started + args.duration if args.duration else None
    while not stop.is_set():
        online = sum(c.online.is_set() for c in cameras)
        _progress("online", online, len(cameras))
        if deadline is not None and time.monotonic() >= deadline:
            stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    online = sum(c.online.is_set() for c in cameras)
    await asyncio.gather(*tasks, return_exceptions=True)
    if video is not None:
        await video.close()
    summary = {
        "cameras": len(cameras),
        "connected": sum(c.stats.connects > 0 for c in cameras),
        "online_at_stop": online,
        "reconnects": sum(c.stats.reconnects for c in cameras),
        "errors": sum(c.stats.errors for c in cameras),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m device_sim", description="VisionConnect camera simulator"
    )
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True)

    o = sub.add_parser("onboard", help="scan a QR code (or take its text) and activate")
    source = o.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--scan",
        metavar="SOURCE",
        help="read the QR code off this video source's pictures (rtsp://…, /dev/videoN, a "
        "file), as a camera does from its own lens; run then bridges that source",
    )
    source.add_argument("--qr", help="PNG/JPEG image of the onboarding QR code")
    source.add_argument("--payload", help="the QR code's text")
    o.add_argument(
        "--scan-timeout", type=float, default=300.0, help="seconds to look for the QR code"
    )
    o.add_argument(
        "--state", default="camera-state.json", help="where to save the camera (mode 0600)"
    )
    o.add_argument("--uid", help="device uid (default: a random SIM-… uid)")
    o.add_argument("--firmware", default="sim-1.0")

    def video_options(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--source",
            help="synthetic (the default), rtsp://user:pass@host/path (an IP camera: H.264 "
            "passed through), /dev/videoN (V4L2) or a video file (looped; H.264 passed "
            "through)",
        )
        cmd.add_argument(
            "--codec",
            default="h264",
            choices=["h264", "vp8"],
            help="what the agent encodes pictures to (synthetic, V4L2, non-H.264 files)",
        )
        cmd.add_argument("--bitrate-kbps", type=int, default=1000, help="the agent's encoder")
        cmd.add_argument(
            "--keyframe-interval",
            type=int,
            help="frames between the agent encoder's keyframes (default: 2 s of frames)",
        )
        cmd.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the synthetic video")
        cmd.add_argument("--fps", type=int, default=15)
        cmd.add_argument(
            "--motion",
            action="append",
            default=[],
            metavar="START:SECONDS",
            help="a motion episode, seconds after start (repeatable)",
        )
        cmd.add_argument(
            "--connect-timeout", type=float, default=10.0, help="seconds for ICE to connect"
        )

    r = sub.add_parser("run", help="stay online and answer viewers")
    r.add_argument("--state", default="camera-state.json")
    r.add_argument("--no-video", action="store_true", help="signaling only")
    video_options(r)

    f = sub.add_parser("fleet", help="run many cameras in one process (signaling only by default)")
    f.add_argument("--count", type=int, required=True)
    f.add_argument(
        "--cloud", required=True, help="the cloud's base URL (to onboard missing cameras)"
    )
    f.add_argument("--email", help="account that owns the fleet (needed to onboard new cameras)")
    f.add_argument("--password")
    f.add_argument("--state-dir", default="fleet-state")
    f.add_argument("--video", action="store_true", help="answer sessions with synthetic video")
    f.add_argument(
        "--duration", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)"
    )
    f.set_defaults(no_video=False, source="synthetic")
    video_options(f)

    d = sub.add_parser("discover", help="list the ONVIF cameras on the LAN (WS-Discovery)")
    d.add_argument(
        "--timeout", type=discover.seconds, default=3.0, metavar="S", help="seconds to listen"
    )
    d.add_argument(
        "--address",
        type=discover.probe_address,
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="probe this host directly too, for networks without multicast (repeatable)",
    )
    d.add_argument(
        "--interface",
        type=discover.interface_address,
        action="append",
        default=[],
        metavar="ADDRESS",
        help="multicast only through the interface with this IPv4 address (repeatable)",
    )
    d.add_argument("--user", help="ONVIF user: also list each camera's RTSP stream URIs")
    d.add_argument("--password", help="the ONVIF user's password (never printed)")
    d.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure(args.log_level, "%(asctime)s %(levelname)s %(name)s %(message)s")  # LOG_FORMAT
    command = {"onboard": onboard, "run": run, "fleet": fleet, "discover": discover.command}[
        args.command
    ]
    if args.command == "run" and not args.no_video:
        from peer import internals

        internals.require()  # aiortc's internals the camera's WebRTC uses: fail at start
    return asyncio.run(command(args))


if __name__ == "__main__":
    sys.exit(main())
