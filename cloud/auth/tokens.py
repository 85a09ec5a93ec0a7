"""Access tokens (JWT, HS256, 15 minutes) and rotating refresh tokens.

Access tokens are checked strictly: only HS256 is accepted (no ``none``, no algorithm
confusion), and ``exp``, ``iat``, ``aud``, ``iss``, ``sub`` and ``typ`` must be present
and right. Refresh tokens are 256-bit random strings stored hashed; each use rotates them,
and presenting an already rotated one revokes the whole family (RFC 9700, section 4.14.2),
since it means two parties hold the same chain.

A retry is not a second party: when a refresh's answer is lost (a 503 while the database was
paused, a dropped connection) after its rotation landed, the app presents the same token
again. Within ``REUSE_INTERVAL_S`` of the rotation, while its successor is still unused, it
gets that same successor back: successors are derived from their predecessor with a server
key, so an answer can be given twice while the database holds only hashes. Whoever uses the
successor first rotates it; the other holder's use of it is then reuse, and the family is
revoked as before, so a replay cannot fork a chain.
"""

import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import jwt
from beanie import PydanticObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from cloud.auth.models import RefreshToken
from cloud.errors import NotFound, Unauthenticated
from protocol.errors import ErrorCode

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
AUDIENCE = "visionconnect:api"
# how long a rotated refresh token, presented again, gets its unused successor back
REUSE_INTERVAL_S = 60


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
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._successor_key = hmac.new(secret, b"refresh-successor", "sha256").digest()
        self.ttl_s = ttl_s

    async def issue(self, user_id: PydanticObjectId) -> tuple[str, str]:
        """A new sign-in: its first refresh token and its family."""
        token, family_id = secrets.token_urlsafe(32), secrets.token_hex(16)
        await self._store(token, user_id, family_id)
        return token, family_id

    async def rotate(self, token: str) -> tuple[PydanticObjectId, str, str]:
        """Consume ``token`` and return (user id, successor, its family, i.e. the sign-in).
        Exactly one concurrent caller rotates it; a retry within ``REUSE_INTERVAL_S`` gets
        the same successor while that is unused (the module's docstring)."""
        digest = token_hash(token)
        collection = RefreshToken.get_pymongo_collection()
        live = {"token_hash": digest, "revoked": False, "expires_at": {"$gt": now()}}
        # the database's clock stamps the rotation: a write held up by a paused database
        # starts the interval when it lands, not when it was sent
        rotated = await collection.find_one_and_update(
            live | {"rotated_at": None},
            {"$currentDate": {"rotated_at": True}},
            return_document=ReturnDocument.AFTER,
        )
        successor = self._successor(token)
        if rotated is None:
            recent = {"$gt": now() - timedelta(seconds=REUSE_INTERVAL_S)}
            rotated = await collection.find_one(live | {"rotated_at": recent})
            if rotated is None or await self._used(successor):
                await self._refuse(digest)
        user_id = PydanticObjectId(rotated["user_id"])
        family: str = rotated["family_id"]
        await self._store(successor, user_id, family)
        # a revocation (sign-out, reuse) that reached the family before the successor did
        # would miss it: the successor goes the way of its predecessor
        if await collection.count_documents({"token_hash": digest, "revoked": True}, limit=1):
            await self.revoke_family(family)
            raise Unauthenticated("the refresh token is invalid", ErrorCode.INVALID_TOKEN)
        return user_id, successor, family

    async def _store(self, token: str, user_id: PydanticObjectId, family_id: str) -> None:
        """The token's document, written once: a retry that gets the same successor again
        finds it there (inserted by whichever concurrent retry came first)."""
        created = now()
        with contextlib.suppress(DuplicateKeyError):
            await RefreshToken.get_pymongo_collection().update_one(
                {"token_hash": token_hash(token)},
                {
                    "$setOnInsert": {
                        "user_id": user_id,
                        "family_id": family_id,
                        "created_at": created,
                        "expires_at": created + timedelta(seconds=self.ttl_s),
                        "rotated_at": None,
                        "revoked": False,
                    }
                },
                upsert=True,
            )

    def _successor(self, token: str) -> str:
        mac = hmac.new(self._successor_key, token.encode(), "sha256").digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    async def _used(self, token: str) -> bool:
        found = await RefreshToken.find_one(RefreshToken.token_hash == token_hash(token))
        return found is not None and (found.rotated_at is not None or found.revoked)

    async def _refuse(self, digest: str) -> NoReturn:
        """401 for a token that is not live; reuse of a rotated one revokes its family."""
        existing = await RefreshToken.find_one(RefreshToken.token_hash == digest)
        if existing is not None and existing.rotated_at is not None and not existing.revoked:
            await self.revoke_family(existing.family_id)
            log.warning(
                "refresh token reuse for user %s: family %s revoked",
                existing.user_id,
                existing.family_id[:8],
            )
        raise Unauthenticated("the refresh token is invalid", ErrorCode.INVALID_TOKEN)

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
