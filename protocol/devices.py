"""Camera messages (docs/protocol.md, "WebSocket signaling"): the motion a camera reports,
the snapshot the cloud asks of it, and its presence and activation as its viewers hear them.
"""

from datetime import datetime
from typing import Literal

from pydantic import Field

from protocol.wire import DeviceId, Message, RequestId


class DeviceMotion(Message):
    """camera -> cloud: motion the camera detected itself started (``active``) or stopped.

    Cameras in ``on_motion`` analysis mode are watched by a relay node only while it lasts.
    """

    type: Literal["device.motion"] = "device.motion"
    id: RequestId | None = None
    active: bool
    score: float | None = Field(default=None, ge=0.0, le=1.0)


class SnapshotRequest(Message):
    """cloud -> camera or relay node: upload a JPEG of the camera's current picture now
    (``PUT /devices/snapshots/{id}`` with the camera's assertion, or
    ``PUT /relays/snapshots/{id}`` with the relay's credential); someone waits for it."""

    type: Literal["snapshot.request"] = "snapshot.request"
    id: str = Field(min_length=1, max_length=64)
    device_id: DeviceId


class DevicePresence(Message):
    type: Literal["device.presence"] = "device.presence"
    device_id: DeviceId
    online: bool
    last_seen: datetime | None = None  # dump() leaves out None: never seen


class DeviceActivated(Message):
    type: Literal["device.activated"] = "device.activated"
    ticket_id: str
    device_id: DeviceId
