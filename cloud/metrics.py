"""The cloud's Prometheus metrics (``GET /metrics``, text format): every metric object lives
here; the code where each thing happens calls ``.inc()`` / ``.observe()`` on it.

Gauges that are cheap to read from memory (cameras connected here, connections by role, the
analysis states of the last assignment step) are read at scrape time by :class:`Live`, never
by a database scan: a scrape costs the same with 10 or 10,000 cameras (bench/metrics.py).

Several processes: with ``PROMETHEUS_MULTIPROC_DIR`` set (before the process starts), the
counters and histograms go to files in that directory and every process's scrape answers the
sum of all of them (prometheus-client's multiprocess mode); the scrape-time gauges are this
process's own. Without it (the default: one uvicorn process per instance) each process is its
own target: scrape every instance, and sum in queries. Labels never carry ids or raw paths,
so the number of series stays bounded.

Exposure (:func:`allowed`): with ``METRICS_TOKEN`` set, ``/metrics`` needs
``Authorization: Bearer <token>``; with ``METRICS_PORT`` set, it is served on that port only
(``METRICS_HOST``, default 127.0.0.1) and the public port answers 404; with neither, it is open
to loopback clients in development and answers 404 otherwise.
"""

import atexit
import hmac
import os
import resource
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Awaitable[Response]]

PREFIX = "visionconnect"
disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: fewer lines

CONNECTIONS = Gauge(
    f"{PREFIX}_signaling_connections",
    "Signaling WebSocket connections held by this process, by role (user, device, relay)",
    ["role"],
    multiprocess_mode="livesum",
)
SESSIONS = Counter(
    f"{PREFIX}_sessions_ended",
    "Viewer sessions ended, by route (p2p: direct or TURN; relay: a relay node) and end reason",
    ["route", "reason"],
)
SESSIONS_STARTED = Counter(
    f"{PREFIX}_sessions_started", "Viewer sessions the camera accepted, by route", ["route"]
)
TIME_TO_FIRST_FRAME = Histogram(
    f"{PREFIX}_time_to_first_frame_seconds",
    "Viewers' time from session.request to the first decoded frame (their session.stats)",
    buckets=(0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20),
)
SIGNALING_LATENCY = Histogram(
    f"{PREFIX}_signaling_latency_seconds",
    "From a viewer's session.request to the camera's answer reaching the viewer",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BUS_PUBLISH_ERRORS = Counter(
    f"{PREFIX}_bus_publish_errors", "Publishes on the bus (Redis) that failed"
)
HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests by route template (never the raw path), method and status",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(  # not per route: 13 series per route made a scrape cost ~4x more
    f"{PREFIX}_http_request_duration_seconds",
    "HTTP request handling time (all routes; the count per route is http_requests)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
SIGN_IN_FAILURES = Counter(
    f"{PREFIX}_sign_in_failures", "Sign-ins refused for a wrong email or password"
)
EVENT_THREADS = Counter(
    f"{PREFIX}_event_threads", "Event threads opened by relay nodes, by kind", ["kind"]
)
NOTIFY_DELIVERIES = Counter(
    f"{PREFIX}_notify_deliveries",
    "Push and webhook deliveries by channel (push, webhook) and outcome"
    " (delivered; failed: a try to be retried; refused: given up at once)",
    ["channel", "outcome"],
)

ANALYSIS_STATES = ("active", "waiting_for_relay")


class Live(Collector):
    """Gauges read from memory at scrape time; the app sets the readers at start."""

    def __init__(self) -> None:
        self.cameras_online: Callable[[], int] | None = None
        self.analysis: dict[str, int] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        cameras = GaugeMetricFamily(
            f"{PREFIX}_cameras_online", "Cameras connected to this process (sum over instances)"
        )
        cameras.add_metric([], self.cameras_online() if self.cameras_online else 0)
        yield cameras
        analysis = GaugeMetricFamily(
            f"{PREFIX}_analysis_cameras",
            "Armed cameras by analysis state after the last assignment step (the fleet's:"
            " every instance reports the same, take the max)",
            labels=["state"],
        )
        for state in ANALYSIS_STATES:
            analysis.add_metric([state], self.analysis.get(state, 0))
        yield analysis


class Process(Collector):
    """prometheus-client's ``process_*`` series, same names and help, except that
    ``process_open_fds`` is read in constant time: the size stat() gives ``/proc/self/fd``
    (Linux >= 6.2: the number of open descriptors). prometheus-client's ProcessCollector
    lists that directory, ~0.7 µs per descriptor: with 10,000 cameras connected that was
    6.8 ms of every scrape, most of its cost (docs/benchmarks.md, "Metrics scrape"). On an
    older kernel (size 0) the listing is the fallback. Without ``/proc``, nothing."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._self = proc / "self"
        self._ticks = os.sysconf("SC_CLK_TCK")
        try:
            lines = (proc / "stat").read_bytes().splitlines()
            self._boot: float | None = next(
                float(line.split()[1]) for line in lines if line.startswith(b"btime ")
            )
        except (OSError, StopIteration):
            self._boot = None

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        if self._boot is None:
            return
        try:
            parts = (self._self / "stat").read_bytes().rsplit(b")", 1)[1].split()
            limits = (self._self / "limits").read_bytes().splitlines()
            fd = self._self / "fd"
            open_fds = os.stat(fd).st_size or len(os.listdir(fd))
        except OSError:
            return
        yield GaugeMetricFamily(
            "process_virtual_memory_bytes", "Virtual memory size in bytes.", value=float(parts[20])
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            value=float(parts[21]) * resource.getpagesize(),
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            value=float(parts[19]) / self._ticks + self._boot,
        )
        yield CounterMetricFamily(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            value=(float(parts[11]) + float(parts[12])) / self._ticks,
        )
        yield GaugeMetricFamily(
            "process_open_fds", "Number of open file descriptors.", value=float(open_fds)
        )
        for line in limits:
            if line.startswith(b"Max open files"):
                yield GaugeMetricFamily(
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    value=float(line.split()[3]),
                )


LIVE = Live()
REGISTRY.register(LIVE)
REGISTRY.unregister(PROCESS_COLLECTOR)
REGISTRY.register(Process())
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # A process that ends drops out of the live gauges (connections) of the others' scrapes.
    atexit.register(multiprocess.mark_process_dead, os.getpid())


def exposition() -> bytes:
    """The text of a scrape: this process's registry, or every process's in multiprocess
    mode (plus this process's scrape-time gauges)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(LIVE)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def allowed(request: Request, token: str, separate_port: bool, production: bool) -> bool:
    """Whether this request may read ``/metrics`` on the public port."""
    if token:
        offered = request.headers.get("authorization", "")
        return hmac.compare_digest(offered.encode(), f"Bearer {token}".encode())
    if separate_port or production:
        return False
    return request.client is not None and request.client.host in LOOPBACK


def endpoint(token: str, separate_port: bool, production: bool) -> Handler:
    """The ``/metrics`` handler of the public port (see :func:`allowed`)."""

    async def metrics(request: Request) -> Response:
        if not allowed(request, token, separate_port, production):
            if token:
                return Response(
                    "a bearer token is required\n",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                    media_type="text/plain",
                )
            return Response("no such resource\n", status_code=404, media_type="text/plain")
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics


def serve(host: str, port: int) -> Callable[[], None]:
    """Serve ``/metrics`` on a port of its own (a thread); returns the function that stops it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(LIVE)
    else:
        registry = REGISTRY
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
