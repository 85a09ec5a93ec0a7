"""A relay node's Prometheus metrics, served on ``METRICS_PORT`` (``METRICS_HOST``, default
127.0.0.1; unset: no listener) by :func:`serve` as ``/metrics`` in the text format.

Counters and the loop-lag histogram are updated where things happen (relay.analysis,
relay.loop_lag); viewers and upstreams are read from the node's tables at scrape time. Each
node process is its own target.
"""

import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from relay.node import RelayNode

PREFIX = "visionconnect_relay"

DETECTIONS = Counter(f"{PREFIX}_detections", "Detector runs (YOLO inferences) completed")
DETECTED_OBJECTS = Counter(f"{PREFIX}_detected_objects", "Objects the detector found")
BUDGET_REFUSALS = Counter(
    f"{PREFIX}_budget_refusals",
    "Frames with motion that the detection budget (DETECTIONS_PER_S) refused",
)
FRAMES_ANALYSED = Counter(f"{PREFIX}_frames_analysed", "Frames run through motion detection")
EVENTS_SENT = Counter(
    f"{PREFIX}_event_reports", "Event reports sent to the cloud, by outcome", ["outcome"]
)
LOOP_LAG = Histogram(
    f"{PREFIX}_loop_lag_seconds",
    "How late the event loop ran a periodic wake-up (sampled 20 times a second)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


class Live(Collector):
    """Viewers and upstreams of the nodes of this process, read at scrape time."""

    def __init__(self) -> None:
        self.nodes: weakref.WeakSet[RelayNode] = weakref.WeakSet()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        nodes = list(self.nodes)
        viewers = GaugeMetricFamily(f"{PREFIX}_viewers", "Viewer sessions served by this node")
        viewers.add_metric([], sum(len(n.downstreams) for n in nodes))
        yield viewers
        upstreams = GaugeMetricFamily(
            f"{PREFIX}_upstreams", "Cameras this node watches (one upstream each)"
        )
        upstreams.add_metric([], sum(len(n.upstreams) for n in nodes))
        yield upstreams


LIVE = Live()
REGISTRY.register(LIVE)


def serve(host: str, port: int) -> Callable[[], None]:
    """Serve ``/metrics`` on ``host:port`` (a thread); returns the function that stops it."""
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
