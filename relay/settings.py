"""The relay node's settings, read from the environment by its composition root."""

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.clips import ClipSettings


@dataclass(frozen=True)
class RelaySettings:
    cloud_url: str
    relay_id: str
    relay_secret: str = field(repr=False)
    yolo_model: str = ""  # "" or "none": motion events only
    analysis_fps: float = 5.0
    detections_per_s: float = 4.0
    max_sessions: int = 50
    analysis_capacity: int = 16  # cameras the cloud may assign to this node (relay.load)
    upstream_grace_s: float = 5.0
    health_file: str = ""  # touched at every load report, for container health checks
    clips: ClipSettings = field(default_factory=ClipSettings)
    metrics_port: int = 0  # GET /metrics (relay.metrics) on this port; 0: no listener
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "RelaySettings":
        cloud = env.get("CLOUD_URL", "http://127.0.0.1:8000").rstrip("/")
        model = env.get("YOLO_MODEL", "")
        return cls(
            cloud_url=cloud,
            relay_id=env.get("RELAY_ID") or f"relay-{socket.gethostname()}",
            relay_secret=env.get("RELAY_SECRET", ""),
            yolo_model="" if model.lower() == "none" else model,
            analysis_fps=float(env.get("ANALYSIS_FPS", "5")),
            detections_per_s=float(env.get("DETECTIONS_PER_S", "4")),
            analysis_capacity=int(env.get("ANALYSIS_CAPACITY", "16")),
            health_file=env.get("HEALTH_FILE", ""),
            metrics_port=int(env.get("METRICS_PORT") or 0),
            metrics_host=env.get("METRICS_HOST") or "127.0.0.1",
            clips=ClipSettings(
                pre_roll_s=float(env.get("CLIP_PRE_ROLL_S", "5")),
                post_roll_s=float(env.get("CLIP_POST_ROLL_S", "5")),
                max_clip_s=float(env.get("CLIP_MAX_S", "120")),
            ),
        )

    @property
    def credential(self) -> str:
        return f"{self.relay_id}:{self.relay_secret}"
