"""The camera's side of "Camera identity" (docs/protocol.md): an Ed25519 key and its assertions."""

import base64
import secrets
import time

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ASSERTION_LIFETIME_S = 120


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key in URL-safe base64, as activation expects it."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def assertion(
    key: Ed25519PrivateKey, device_id: str, audience: str, lifetime_s: int = ASSERTION_LIFETIME_S
) -> str:
    """A fresh, single-use JWT proving the camera holds ``key`` (``alg: EdDSA``)."""
    now = int(time.time())
    claims = {
        "sub": device_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_s,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, key, algorithm="EdDSA")
