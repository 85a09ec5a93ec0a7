"""Onboarding tickets: a hash of the QR token, bound to the user and the camera model.

The Wi-Fi name and password are not here: they live only in the QR payload returned once.
"""

from datetime import datetime
from typing import Annotated, Literal

from beanie import Document, Indexed, PydanticObjectId
from pymongo import ASCENDING, IndexModel

# Tickets stay a day after expiry so that "expired" (410) can be told from "unknown" (404).
KEEP_EXPIRED_S = 24 * 3600


class OnboardingTicket(Document):
    user_id: Annotated[PydanticObjectId, Indexed()]
    token_hash: Annotated[str, Indexed(unique=True)]
    device_name: str
    camera_model: str
    created_at: datetime
    expires_at: datetime
    status: Literal["pending", "claimed", "activated"] = "pending"
    device_id: PydanticObjectId | None = None

    class Settings:
        name = "onboarding_tickets"
        indexes = [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=KEEP_EXPIRED_S)]
