"""The onboarding QR payload: compact, versioned JSON (docs/protocol.md, "QR payload").

``{"v":1,"u":"<cloud base URL>","t":"<token>","s":"<ssid>","p":"<password>","m":"<model>"}``

Limits follow what a camera can join: an SSID is at most 32 bytes (IEEE 802.11), a WPA2
passphrase 8..63 printable characters or 64 hex digits, or empty for an open network.
The whole text stays under 512 bytes so the code remains scannable at error correction M.
"""

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.errors import ErrorCode, ProtocolError

QR_VERSION = 1
MAX_PAYLOAD_BYTES = 512
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{22}$"  # 128 bits, URL-safe base64 without padding
WIFI_PASSWORD_PATTERN = r"^([\x20-\x7e]{8,63}|[0-9A-Fa-f]{64})?$"
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,47}$"

CameraModel = Annotated[str, Field(pattern=MODEL_PATTERN, description="Camera model name")]


def check_ssid(ssid: str) -> str:
    size = len(ssid.encode())
    if not 1 <= size <= 32:
        raise ValueError("the Wi-Fi name must be 1 to 32 bytes long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in ssid):
        raise ValueError("the Wi-Fi name must not contain control characters")
    return ssid


def check_wifi_password(password: str) -> str:
    if password == "":
        return password  # an open network
    if len(password) == 64 and re.fullmatch(r"[0-9A-Fa-f]{64}", password):
        return password  # a raw pre-shared key
    if not 8 <= len(password) <= 63 or not all(0x20 <= ord(c) <= 0x7E for c in password):
        raise ValueError(
            "the Wi-Fi password must be empty, 8 to 63 printable ASCII characters, "
            "or 64 hexadecimal digits"
        )
    return password


class QrPayload(BaseModel):
    """What the camera reads from the QR code."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    v: Literal[1] = 1
    u: str = Field(min_length=8, max_length=200, pattern=r"^https?://[^\s\"]+$")
    t: str = Field(pattern=TOKEN_PATTERN)
    s: str
    p: str = ""
    m: CameraModel

    @field_validator("s")
    @classmethod
    def _ssid(cls, value: str) -> str:
        return check_ssid(value)

    @field_validator("p")
    @classmethod
    def _password(cls, value: str) -> str:
        return check_wifi_password(value)

    def __repr__(self) -> str:  # never show the Wi-Fi password or the token
        return f"QrPayload(v={self.v}, u={self.u!r}, s={self.s!r}, m={self.m!r})"

    __str__ = __repr__


def encode_qr_payload(payload: QrPayload) -> str:
    text = json.dumps(payload.model_dump(), separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(ErrorCode.INVALID_QR_PAYLOAD, "the QR payload is too long")
    return text


def decode_qr_payload(text: str) -> QrPayload:
    """Parse QR text, refusing other versions, unknown fields and out-of-range values."""
    if len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(ErrorCode.INVALID_QR_PAYLOAD, "the QR payload is too long")
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_QR_PAYLOAD, "the QR code is not JSON") from exc
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_QR_PAYLOAD, "the QR payload is not an object")
    # type() so that JSON true and 1.0, which compare equal to 1 in Python, are refused.
    if type(data.get("v")) is not int or data["v"] != QR_VERSION:
        raise ProtocolError(
            ErrorCode.INVALID_QR_PAYLOAD,
            f"unsupported QR payload version {data.get('v')!r}; this camera reads version 1",
        )
    try:
        return QrPayload.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors() if e["loc"])
        raise ProtocolError(
            ErrorCode.INVALID_QR_PAYLOAD, f"the QR payload has invalid fields: {fields}"
        ) from None
