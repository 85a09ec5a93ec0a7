"""Camera identity: a short-lived EdDSA assertion signed with the key registered at activation.

docs/protocol.md, "Camera identity": ``alg: EdDSA``, ``sub`` = device id, ``aud`` = the cloud's
base URL, ``iat``, ``exp`` at most 5 minutes ahead, a unique ``jti``. Knowing a device id
grants nothing (CVE-2021-28372): only a signature by the registered key does, and each
``jti`` is accepted once across all instances (the bus claims it).
"""

import base64
import time
from dataclasses import dataclass
from typing import Any

import jwt
from beanie import PydanticObjectId
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud.devices.access import binding
from cloud.devices.models import Device
from cloud.errors import Unauthenticated, Unavailable
from cloud.signaling.bus import Bus, BusUnavailable
from protocol.errors import ErrorCode

MAX_LIFETIME_S = 300
LEEWAY_S = 10


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

    async def verify(self, token: str) -> DevicePrincipal:
        try:
            header = jwt.get_unverified_header(token)
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _refuse("not a JWT") from None
        if header.get("alg") != "EdDSA":
            raise _refuse("alg must be EdDSA")
        sub = unverified.get("sub")
        if not isinstance(sub, str) or not PydanticObjectId.is_valid(sub) or len(sub) != 24:
            raise _refuse("unknown device")
        device = await Device.get(PydanticObjectId(sub))
        if device is None:
            raise _refuse("unknown device")
        raw = base64.urlsafe_b64decode(device.public_key + "=" * (-len(device.public_key) % 4))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                Ed25519PublicKey.from_public_bytes(raw),
                algorithms=["EdDSA"],
                audience=self.audience,
                options={"require": ["exp", "iat", "sub", "aud", "jti"]},
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise _refuse("expired") from None
        except jwt.PyJWTError:
            raise _refuse("bad signature or claims") from None
        now = time.time()
        if claims["exp"] - now > MAX_LIFETIME_S + LEEWAY_S or claims["iat"] > now + LEEWAY_S:
            raise _refuse("lifetime over 5 minutes")
        jti = claims["jti"]
        if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
            raise _refuse("jti must be a unique string")
        ttl = max(1.0, claims["exp"] - now + LEEWAY_S)
        try:
            fresh = await self.bus.claim_once(f"jti:{sub}:{jti}", ttl)
        except BusUnavailable as exc:  # replay protection cannot be checked: refuse for now
            raise Unavailable("signaling is unavailable; try again shortly", 5) from exc
        if not fresh:
            raise _refuse("replayed")
        assert device.id is not None
        return DevicePrincipal(device.id, device.owner_id, binding(device))
