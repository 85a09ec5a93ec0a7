"""The hub's state: its limits, each local connection, each side of a session, and the
grants revoked lately (``cloud.signaling.hub``)."""

from dataclasses import dataclass, field
from typing import Literal

from cloud.signaling.deliveries import Role
from protocol.messages import IceServer

Grants = tuple[str, ...]  # what a session or connection rests on (cloud.devices.access)
REVOKED_MEMORY_S = 600.0


@dataclass(frozen=True)
class Limits:
    sdp_per_s: float = 5.0
    ice_per_s: float = 20.0
    stats_per_s: float = 2.0  # session.stats: one per side per session is the norm
    motion_per_s: float = 2.0  # device.motion: a start and a stop per episode
    viewers_per_camera: int = 10
    sessions_per_viewer: int = 20
    accept_timeout_s: float = 5.0
    answer_timeout_s: float = 15.0
    strikes_before_close: int = 20


class Bucket:
    """Token bucket: ``rate`` per second, bursts up to one second's worth."""

    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp: float | None = None

    def allow(self, now: float) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)  # one per connection, 10,000s per instance: keep it small
class Connection:
    id: str
    role: Role
    principal: str  # user id, device id or relay id
    sdp: Bucket
    ice: Bucket
    grant: str | None = None  # a camera's binding
    strikes: int = 0
    stats: Bucket = field(default_factory=lambda: Bucket(Limits.stats_per_s))
    motion: Bucket | None = None  # a camera's device.motion, made on its first report

    def over_rate(self, kind: str, limits: Limits, now: float) -> str | None:
        """Why a frame of type ``kind`` is one too many now; None when it is allowed (or not
        a rated type)."""
        match kind:
            case "session.offer" | "session.answer":
                bucket, rate, what = self.sdp, limits.sdp_per_s, "SDP messages"
            case "session.ice":
                bucket, rate, what = self.ice, limits.ice_per_s, "ICE messages"
            case "session.stats":
                bucket, rate, what = self.stats, limits.stats_per_s, "session.stats messages"
            case "device.motion":
                if self.motion is None:
                    self.motion = Bucket(limits.motion_per_s)
                bucket, rate, what = self.motion, limits.motion_per_s, "device.motion messages"
            case _:
                return None
        return None if bucket.allow(now) else f"over {rate:g} {what}/s"


@dataclass
class ViewerSide:
    id: str
    device_id: str
    viewer: str  # local connection id (a user's, or a relay's upstream)
    user_id: str
    request_id: str | None
    ice_servers: list[IceServer]
    created_at: float
    target: str  # the channel of the far side: the camera's, or the serving relay's connection
    grants: Grants = ()
    route: Literal["p2p", "relay"] = "p2p"
    relay: str | None = None  # the serving relay's id
    accepted: bool = False
    offered_at: float | None = None
    answered: bool = False


@dataclass
class CameraSide:
    id: str
    device_id: str
    camera: str  # local connection id: the camera's, or the relay's serving the viewer
    viewer_channel: str
    user_id: str
    grants: Grants = ()
    opened_at: float = 0.0  # monotonic


@dataclass
class Revocations:
    """Grants revoked lately, and the changes that revoked them, each kept
    ``REVOKED_MEMORY_S``: long enough to cover a check that read the database just before
    the change was recorded."""

    grants: dict[str, float] = field(default_factory=dict)  # grant -> forgotten at
    changes: dict[str, float] = field(default_factory=dict)  # change id -> forgotten at

    def add(self, change_id: str, grants: Grants, now: float) -> bool:
        """Remember a change; False when it was known already (heard from another side)."""
        if change_id in self.changes:
            return False
        self.changes[change_id] = now + REVOKED_MEMORY_S
        for grant in grants:
            self.grants[grant] = now + REVOKED_MEMORY_S
        return True

    def any(self, grants: Grants) -> bool:
        return any(g in self.grants for g in grants)

    def forget(self, now: float) -> None:
        for memory in (self.grants, self.changes):
            for key in [k for k, until in memory.items() if until <= now]:
                del memory[key]
