"""Device registry and sharing. Ids are stored plainly (no beanie ``Link``: docs/design.md)."""

from datetime import datetime
from typing import Annotated, Any, Literal

from beanie import Document, Indexed, PydanticObjectId
from pymongo import ASCENDING, IndexModel

ACCESS_CHANGE_KEPT_S = 86_400  # TTL: tidying only; instances read the last seconds of changes


class Device(Document):
    device_uid: Annotated[str, Indexed(unique=True)]
    owner_id: Annotated[PydanticObjectId, Indexed()]
    name: str
    camera_model: str
    firmware_version: str
    public_key: str  # raw Ed25519 key, URL-safe base64 (docs/protocol.md, "Camera identity")
    activated_at: datetime
    online: bool = False
    last_seen: datetime | None = None
    motion: dict[str, Any] | None = None  # protocol.api.MotionSettings; None: defaults
    # Raised by each connection that brings the camera online (its time in ns); presence
    # writes of an older connection match nothing (cloud.signaling.presence).
    presence_epoch: int = 0
    # Unattended analysis (cloud.analysis): armed cameras are assigned to a relay node.
    armed: bool = True
    analysis_mode: Literal["continuous", "on_motion"] = "continuous"
    schedule: dict[str, Any] | None = None  # protocol.api.Schedule; None: always armed
    analysis_relay: str | None = None  # the relay node analysing it; None: none assigned
    motion_active: bool = False  # on_motion: the camera reports motion now (device.motion)
    motion_at: datetime | None = None
    recording_until: datetime | None = None  # the end of the last recording asked for

    class Settings:
        name = "devices"
        indexes = [
            IndexModel([("analysis_relay", ASCENDING)]),
            IndexModel(
                [("armed", ASCENDING), ("online", ASCENDING), ("analysis_relay", ASCENDING)]
            ),
        ]


class Share(Document):
    # Indexed: every camera's presence change reads its shares (SecantusDB scanned 300
    # shares in 2.5 ms of its CPU per read, 0.18 ms with the index).
    device_id: Annotated[PydanticObjectId, Indexed()]
    user_id: Annotated[PydanticObjectId, Indexed()]
    role: Literal["viewer"] = "viewer"
    created_at: datetime

    class Settings:
        name = "shares"
        indexes = [
            IndexModel([("device_id", ASCENDING), ("user_id", ASCENDING)], unique=True),
        ]


class AccessChange(Document):
    """Grants that stopped holding (cloud.devices.access), recorded before the change is made.

    Every cloud instance reads the recent ones every ``ACCESS_POLL_S`` and ends what rests
    on them, whether or not the broadcast on the bus reached it (docs/protocol.md,
    "Revocation").
    """

    device_id: PydanticObjectId | None = None  # None: sign-ins ended (cloud.auth.signins)
    grants: list[str]
    reason: Literal["access_revoked", "device_removed", "signed_out"]
    at: datetime

    class Settings:
        name = "access_changes"
        indexes = [IndexModel([("at", ASCENDING)], expireAfterSeconds=ACCESS_CHANGE_KEPT_S)]
