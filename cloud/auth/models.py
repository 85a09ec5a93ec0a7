"""Account documents. Refresh tokens are stored as SHA-256 hashes, never in clear."""

from datetime import datetime
from typing import Annotated

from beanie import Document, Indexed, PydanticObjectId
from pymongo import ASCENDING, IndexModel


class User(Document):
    email: Annotated[str, Indexed(unique=True)]
    password_hash: str
    created_at: datetime
    # Media limits of this owner; None: the defaults in Settings (cloud/media/catalog.py).
    media_retention_days: int | None = None
    media_quota_bytes: int | None = None

    class Settings:
        name = "users"


class RefreshToken(Document):
    """One link of a rotation chain; ``family_id`` groups a login's whole chain."""

    token_hash: Annotated[str, Indexed(unique=True)]
    user_id: Annotated[PydanticObjectId, Indexed()]
    family_id: Annotated[str, Indexed()]
    created_at: datetime
    expires_at: datetime
    rotated_at: datetime | None = None
    revoked: bool = False

    class Settings:
        name = "refresh_tokens"
        indexes = [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0)]
