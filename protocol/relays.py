"""Relay node messages (docs/protocol.md, "WebSocket signaling"): the node's load report
and what the cloud gives it to do: viewers' sessions routed through it, and the cameras and
uploaded videos it analyses or records.
"""

from datetime import datetime
from typing import Literal

from pydantic import Field

from protocol.wire import DeviceId, Message, SessionId


class RelayLoad(Message):
    """relay -> cloud: how busy the relay is (0 idle .. 1 full); sent with each heartbeat.

    ``capacity``: how many cameras the node can analyse at once (the cloud assigns armed
    cameras by the room left); a node that does not say takes none.
    """

    type: Literal["relay.load"] = "relay.load"
    load: float = Field(ge=0.0, le=1.0)
    sessions: int = Field(ge=0)
    cameras: int = Field(default=0, ge=0)
    capacity: int = Field(default=0, ge=0, le=10_000)


class RelaySession(Message):
    """cloud -> relay: a viewer's session of ``device_id`` is routed through this relay.

    The relay watches the camera itself (its own ``session.request``, allowed while it
    serves a relayed session of that device) and answers the viewer's ``session.offer``.
    """

    type: Literal["relay.session"] = "relay.session"
    session_id: SessionId
    device_id: DeviceId


class RecordingOrder(Message):
    """A recording the owner asked for: the node records the camera until ``until``
    (with its pre-roll when it was already watching) and uploads it as media ``id``."""

    id: str = Field(min_length=1, max_length=64)
    until: datetime


class AssignedCamera(Message):
    device_id: DeviceId
    mode: Literal["continuous", "on_motion"]
    motion: bool = False  # on_motion: the camera reports motion now
    armed: bool = True  # False: watched only for ``recordings``, no events
    recordings: list[RecordingOrder] = Field(default_factory=list)


class UploadOrder(Message):
    """A video file an owner uploaded, for the node to analyse like the camera's stream."""

    id: str = Field(min_length=1, max_length=64)
    device_id: DeviceId


class RelayAssign(Message):
    """cloud -> relay: every camera this node analyses or records, sent whenever the set
    changes (it replaces the previous one). The node keeps an upstream to each armed
    ``continuous`` camera, to each ``on_motion`` camera while its ``motion`` lasts, and to
    each camera with ``recordings`` until they end; it may request sessions of these cameras
    whether or not a viewer is routed through it. ``uploads``: the uploaded videos the node
    analyses (``GET /relays/uploads/{id}/content``; progress and events as it goes)."""

    type: Literal["relay.assign"] = "relay.assign"
    cameras: list[AssignedCamera]
    uploads: list[UploadOrder] = Field(default_factory=list)
