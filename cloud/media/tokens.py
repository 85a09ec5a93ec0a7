"""Signed content URLs: a ``<video src>`` cannot send the app's bearer token.

``GET /media/{id}`` hands its caller a ``content_url`` whose ``token`` is
``<user id>.<expiry, unix s>.<HMAC-SHA256(key, "media id.user id.expiry"), base64url>``. It
stands in for the Authorization header on that one media item, for that one user, for
``MEDIA_URL_TTL_S`` (a few minutes). It proves *who* asks, not that they may: the route
checks access again on every fetch, so a revoked share stops playing at the next request
(a player asks for ranges as it plays). The key is ``MEDIA_URL_SECRET``, or one derived
from the JWT secret (``Settings.resolved_media_url_secret``).

Trade-off: a URL can leak (history, logs of a proxy); the short lifetime and the binding to
one item and one user bound what a leak gives. Unlike a JWT there is nothing to choose
(one algorithm, three fields), so nothing to confuse.
"""

import base64
import hashlib
import hmac
import time

from beanie import PydanticObjectId


class ContentTokens:
    def __init__(self, key: bytes, ttl_s: int) -> None:
        self._key = key
        self.ttl_s = ttl_s

    def _sign(self, media_id: str, user_id: str, expires: int) -> str:
        message = f"{media_id}.{user_id}.{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, media_id: PydanticObjectId, user_id: PydanticObjectId) -> str:
        expires = int(time.time()) + self.ttl_s
        return f"{user_id}.{expires}.{self._sign(str(media_id), str(user_id), expires)}"

    def verify(self, token: str, media_id: str) -> PydanticObjectId | None:
        """The user the token was issued to, or None (malformed, forged, other item, expired)."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 12:
            return None
        user_id, expires = parts[0], int(parts[1])
        if not PydanticObjectId.is_valid(user_id) or len(user_id) != 24:
            return None
        if not hmac.compare_digest(parts[2], self._sign(media_id, user_id, expires)):
            return None
        if expires <= time.time():
            return None
        return PydanticObjectId(user_id)
