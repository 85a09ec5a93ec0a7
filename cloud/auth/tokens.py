"""Access tokens (JWT, HS256, 15 minutes) and rotating refresh tokens.

Access tokens are checked strictly: only HS256 is accepted (no ``none``, no algorithm
confusion), and ``exp``, ``iat``, ``aud``, ``iss``, ``sub`` and ``typ`` must be present
and right. Refresh tokens are 256-bit random strings stored hashed; each use rotates them,
and presenting an already rotated one revokes the whole family (RFC 9700, section 4.14.2),
since it means two parties hold the same chain.
"""

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from beanie import PydanticObjectId
from pymongo import ReturnDocument

from cloud.auth.models import RefreshToken
from cloud.errors import NotFound, Unauthenticated
from protocol.errors import ErrorCode

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
AUDIENCE = "visionconnect:api"


def now() -> datetime:
    """The current time at the database's precision (BSON dates hold milliseconds), so a
    time returned when a document is created equals the one read back from it later."""
    current = datetime.now(UTC)
    return current.replace(microsecond=current.microsecond // 1000 * 1000)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class UserPrincipal:
    user_id: PydanticObjectId
    email: str
    sid: str = ""  # the sign-in: its refresh token family (cloud.auth.signins)

    @property
    def grant(self) -> str:
        """What a connection opened with this token rests on (cloud.signaling.hub)."""
        return signin_grant(self.sid)


def signin_grant(sid: str) -> str:
    return f"signin:{sid}"


class AccessTokens:
    def __init__(self, secret: str, issuer: str, ttl_s: int) -> None:
        self._secret = secret
        self._issuer = issuer
        self.ttl_s = ttl_s

    def issue(self, user_id: PydanticObjectId, email: str, sid: str) -> str:
        """An access token of the sign-in ``sid`` (its refresh token family)."""
        issued = now()
        claims = {
            "sub": str(user_id),
            "sid": sid,
            "email": email,
            "typ": "access",
            "aud": AUDIENCE,
            "iss": self._issuer,
            "iat": issued,
            "exp": issued + timedelta(seconds=self.ttl_s),
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> UserPrincipal:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "aud", "iss", "typ", "sid"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the access token has expired", ErrorCode.INVALID_TOKEN) from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("the access token is invalid", ErrorCode.INVALID_TOKEN) from exc
        if (
            claims.get("typ") != "access"
            or not PydanticObjectId.is_valid(claims["sub"])
            or not isinstance(claims["sid"], str)
        ):
            raise Unauthenticated("the access token is invalid", ErrorCode.INVALID_TOKEN)
        return UserPrincipal(
            PydanticObjectId(claims["sub"]), str(claims.get("email", "")), claims["sid"]
        )


class RefreshTokens:
    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s

    async def issue(
        self, user_id: PydanticObjectId, family_id: str | None = None
    ) -> tuple[str, str]:
        """A refresh token and its family: a new sign-in unless ``family_id`` is given."""
        token = secrets.token_urlsafe(32)
        family_id = family_id or secrets.token_hex(16)
        created = now()
        await RefreshToken(
            token_hash=token_hash(token),
            user_id=user_id,
            family_id=family_id,
            created_at=created,
            expires_at=created + timedelta(seconds=self.ttl_s),
        ).insert()
        return token, family_id

    async def rotate(self, token: str) -> tuple[PydanticObjectId, str, str]:
        """Consume ``token`` and return (user id, successor, its family, i.e. the sign-in).
        Exactly one concurrent caller wins."""
        digest = token_hash(token)
        collection = RefreshToken.get_pymongo_collection()
        claimed = await collection.find_one_and_update(
            {
                "token_hash": digest,
                "rotated_at": None,
                "revoked": False,
                "expires_at": {"$gt": now()},
            },
            {"$set": {"rotated_at": now()}},
            return_document=ReturnDocument.AFTER,
        )
        if claimed is None:
            existing = await RefreshToken.find_one(RefreshToken.token_hash == digest)
            if existing is not None and existing.rotated_at is not None and not existing.revoked:
                await self.revoke_family(existing.family_id)
                log.warning(
                    "refresh token reuse for user %s: family %s revoked",
                    existing.user_id,
                    existing.family_id[:8],
                )
            raise Unauthenticated("the refresh token is invalid", ErrorCode.INVALID_TOKEN)
        user_id = PydanticObjectId(claimed["user_id"])
        family: str = claimed["family_id"]
        successor, _ = await self.issue(user_id, family)
        return user_id, successor, family

    async def revoke_family(self, family_id: str) -> None:
        await RefreshToken.get_pymongo_collection().update_many(
            {"family_id": family_id}, {"$set": {"revoked": True}}
        )

    async def family_of(self, token: str, user_id: PydanticObjectId) -> str:
        """The sign-in ``token`` belongs to (404 unless it is this user's)."""
        found = await RefreshToken.find_one(
            RefreshToken.token_hash == token_hash(token), RefreshToken.user_id == user_id
        )
        if found is None:
            raise NotFound("no such refresh token for this user", ErrorCode.NOT_FOUND)
        return found.family_id
