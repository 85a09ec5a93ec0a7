"""``python -m relay``: run a relay node (media fallback and fan-out, motion + YOLO events).

Configuration from the environment: ``CLOUD_URL``, ``RELAY_ID``, ``RELAY_SECRET``,
``YOLO_MODEL`` (``.pt``/``.onnx``/``.yaml``; unset or ``none``: motion events only),
``ANALYSIS_FPS``, ``DETECTIONS_PER_S``, ``ICE_HOST_ADDRESSES`` (comma list of host candidate
addresses; unset: all interfaces).
"""

import argparse
import asyncio
import logging
import os
import signal
import sys

from peer.network import host_addresses_from_env, use_host_addresses
from protocol.logs import configure
from relay import metrics
from relay.node import RelayNode
from relay.settings import RelaySettings

log = logging.getLogger("relay")


async def serve(settings: RelaySettings) -> int:
    addresses = host_addresses_from_env(os.environ)
    if addresses:
        use_host_addresses(addresses)
    detector = None
    if settings.yolo_model:
        from relay.detector import make_detector  # .onnx: ONNX Runtime, no torch

        detector = make_detector(settings.yolo_model, imgsz=320)
        await detector.start()  # load the model before taking sessions
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = RelayNode(settings, detector)
    stop_metrics = (
        metrics.serve(settings.metrics_host, settings.metrics_port)
        if settings.metrics_port
        else None
    )
    log.info("relay %s connecting to %s", settings.relay_id, settings.cloud_url)
    try:
        await node.run(stop)
    finally:
        if stop_metrics is not None:
            await asyncio.to_thread(stop_metrics)
    log.info("relay stopped: %s", node.stats)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay", description=__doc__.splitlines()[0])
    parser.add_argument("--cloud", help="the cloud's base URL (default: CLOUD_URL)")
    parser.add_argument("--relay-id", help="this node's id (default: RELAY_ID or relay-<host>)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    configure(args.log_level, "%(asctime)s %(levelname)s %(name)s %(message)s")  # LOG_FORMAT
    env = dict(os.environ)
    if args.cloud:
        env["CLOUD_URL"] = args.cloud
    if args.relay_id:
        env["RELAY_ID"] = args.relay_id
    settings = RelaySettings.from_env(env)
    if not settings.relay_secret:
        print("configuration error: RELAY_SECRET is required", file=sys.stderr)
        return 2
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
