"""Device registry and sharing. Ids are stored plainly (no beanie ``Link``: DESIGN.md)."""

from datetime import datetime
from typing import Annotated, Any, Literal

from beanie import Document, Indexed, PydanticObjectId
from pymongo import ASCENDING, IndexModel


class Device(Document):
    device_uid: Annotated[str, Indexed(unique=True)]
    owner_id: Annotated[PydanticObjectId, Indexed()]
    name: str
    camera_model: str
    firmware_version: str
    public_key: str  # raw Ed25519 key, URL-safe base64 (PROTOCOL.md, "Camera identity")
    activated_at: datetime
    online: bool = False
    last_seen: datetime | None = None
    motion: dict[str, Any] | None = None  # protocol.api.MotionSettings; None: defaults

    class Settings:
        name = "devices"


class Share(Document):
    device_id: PydanticObjectId
    user_id: Annotated[PydanticObjectId, Indexed()]
    role: Literal["viewer"] = "viewer"
    created_at: datetime

    class Settings:
        name = "shares"
        indexes = [
            IndexModel([("device_id", ASCENDING), ("user_id", ASCENDING)], unique=True),
        ]
