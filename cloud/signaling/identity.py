"""Camera identity: a short-lived EdDSA assertion signed with the key registered at activation.

docs/protocol.md, "Camera identity": ``alg: EdDSA``, ``sub`` = device id, ``aud`` = the cloud's
base URL, ``iat``, ``exp`` at most 5 minutes ahead, a unique ``jti``. Knowing a device id
grants nothing (CVE-2021-28372): only a signature by the registered key does, and each
``jti`` is accepted once across all instances (the bus claims it).

The registered key is read for every hello, never cached: a removed or re-keyed camera is
refused at its next hello, on every instance, with no invalidation to miss. The reads of
hellos that arrive together go in one query (:class:`GroupCommit`): during a reconnect
storm one database command serves many cameras (docs/benchmarks.md, "Camera connects").
"""

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from beanie import PydanticObjectId
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud.devices.access import binding_of
from cloud.devices.models import Device
from cloud.errors import Unauthenticated, Unavailable
from cloud.signaling.bus import Bus, BusUnavailable
from cloud.signaling.group_commit import GroupCommit
from protocol.errors import ErrorCode

MAX_LIFETIME_S = 300
LEEWAY_S = 10
# Keys read in one query at most: SecantusDB's cost per id of an ``$in`` grows with its
# length (50: 0.07 ms, 200: 0.14 ms of its CPU per id; one find_one: 0.16 ms).
READ_BATCH = 50


@dataclass(frozen=True)
class DevicePrincipal:
    device_id: PydanticObjectId
    owner_id: PydanticObjectId
    binding: str  # the grant its connection rests on (cloud.devices.access)


def _refuse(why: str) -> Unauthenticated:
    return Unauthenticated(f"device assertion refused: {why}", ErrorCode.INVALID_TOKEN)


class DeviceAssertions:
    def __init__(self, audience: str, bus: Bus) -> None:
        self.audience = audience
        self.bus = bus
        self._keys = GroupCommit(registered_keys, "device keys", READ_BATCH)

    async def verify(self, token: str) -> DevicePrincipal:
        header, unverified = _unverified(token)
        if header.get("alg") != "EdDSA":
            raise _refuse("alg must be EdDSA")
        sub = unverified.get("sub")
        if not isinstance(sub, str) or not PydanticObjectId.is_valid(sub) or len(sub) != 24:
            raise _refuse("unknown device")
        device_id = str(PydanticObjectId(sub))  # one spelling (lower case) from here on
        device = await self._keys(device_id)
        if device is None:
            raise _refuse("unknown device")
        key, owner_id = device
        try:
            public = Ed25519PublicKey.from_public_bytes(
                base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
            )
            claims: dict[str, Any] = jwt.decode(
                token,
                public,
                algorithms=["EdDSA"],
                audience=self.audience,
                options={"require": ["exp", "iat", "sub", "aud", "jti"]},
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise _refuse("expired") from None
        except (jwt.PyJWTError, ValueError):
            raise _refuse("bad signature or claims") from None
        if claims["sub"] != sub:  # the same bytes parsed twice: never, but never trusted
            raise _refuse("bad signature or claims")
        now = time.time()
        if claims["exp"] - now > MAX_LIFETIME_S + LEEWAY_S or claims["iat"] > now + LEEWAY_S:
            raise _refuse("lifetime over 5 minutes")
        jti = claims["jti"]
        if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
            raise _refuse("jti must be a unique string")
        ttl = max(1.0, claims["exp"] - now + LEEWAY_S)
        try:
            fresh = await self.bus.claim_once(f"jti:{device_id}:{jti}", ttl)
        except BusUnavailable as exc:  # replay protection cannot be checked: refuse for now
            raise Unavailable("signaling is unavailable; try again shortly", 5) from exc
        if not fresh:
            raise _refuse("replayed")
        return DevicePrincipal(PydanticObjectId(device_id), owner_id, binding_of(device_id, key))


async def registered_keys(device_ids: list[str]) -> dict[str, tuple[str, PydanticObjectId]]:
    """The registered key and the owner of each of ``device_ids`` that exists, read now in
    one query (the two fields only, without building documents)."""
    cursor = Device.get_pymongo_collection().find(
        {"_id": {"$in": [PydanticObjectId(d) for d in device_ids]}},
        projection={"public_key": 1, "owner_id": 1},
    )
    return {
        str(doc["_id"]): (key, PydanticObjectId(doc["owner_id"]))
        async for doc in cursor
        if isinstance(key := doc.get("public_key"), str)
    }


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, read without checking anything: only to find
    whose key verifies it (``jwt.decode`` then parses it again, strictly)."""
    try:
        head, payload, _ = token.split(".")
        header, claims = (
            json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
            for part in (head, payload)
        )
    except (ValueError, TypeError):  # binascii.Error and JSONDecodeError are ValueErrors
        raise _refuse("not a JWT") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _refuse("not a JWT")
    return header, claims
