"""What the hub is told and what it asks of its edges (``cloud.signaling.hub``).

Channels on the bus: ``dev.<device id>`` (held by the instance where the camera's connection
lives), ``conn.<connection id>`` (a viewer's or relay's connection), ``user.<user id>``
(pushes to a user's connections) and the broadcast channel. Deliveries: :class:`Send` a
frame to a local connection, :class:`Publish` an envelope on a channel, :class:`Close` a
connection, :class:`Subscribe` to a channel, and the records the edge keeps in the database
(:class:`PresenceChanged`, :class:`Record`, :class:`StatsReport`).
"""

from dataclasses import dataclass
from typing import Any, Literal

from cloud.signaling.envelopes import Envelope
from protocol.messages import Message, SessionStats

Role = Literal["user", "device", "relay"]
BROADCAST = "all"

CLOSE_AUTH = 4401
CLOSE_POLICY = 1008
CLOSE_REPLACED = 4409
CLOSE_REMOVED = 4404
CLOSE_TRY_AGAIN = 1013
CLOSE_RESYNC = 4503  # the bus lost messages for the connection: reconnect, re-read state


def device_channel(device_id: str) -> str:
    return f"dev.{device_id}"


def conn_channel(conn_id: str) -> str:
    return f"conn.{conn_id}"


def user_channel(user_id: str) -> str:
    return f"user.{user_id}"


@dataclass(frozen=True)
class Send:
    conn: str
    message: Message | dict[str, Any]  # a dict: a push already in wire form


@dataclass(frozen=True)
class Publish:
    channel: str
    envelope: Envelope


@dataclass(frozen=True)
class Close:
    conn: str
    code: int
    reason: str


@dataclass(frozen=True)
class Subscribe:
    channel: str
    on: bool = True  # False: unsubscribe


@dataclass(frozen=True)
class PresenceChanged:
    """A local camera came online or went offline: the edge updates presence and pushes it."""

    device_id: str
    conn: str
    online: bool


@dataclass(frozen=True)
class Record:
    """A viewer-side session changed state: the edge stores it (``sessions`` collection)."""

    session_id: str
    event: Literal["created", "answered", "ended"]
    device_id: str
    user_id: str
    reason: str | None = None
    route: str = "p2p"
    viewer_role: Role = "user"  # "relay": a relay node's own upstream session


@dataclass(frozen=True)
class StatsReport:
    """A side of a session reported how it connected (``session.stats``): the edge stores
    it on the session's record, each side in its own field."""

    session_id: str
    side: Literal["viewer", "camera"]
    stats: SessionStats


@dataclass(frozen=True)
class MotionReport:
    """A camera reported motion it detected itself (``device.motion``): the edge records it
    for the analysis assignment (cloud.analysis)."""

    device_id: str
    active: bool


Delivery = (
    Send | Publish | Close | Subscribe | PresenceChanged | Record | StatsReport | MotionReport
)
