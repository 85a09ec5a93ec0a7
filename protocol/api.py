"""Bodies of the HTTP API (docs/protocol.md, "HTTP API"). Requests forbid unknown fields."""

import re
from datetime import datetime
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from protocol.errors import ErrorCode
from protocol.events import Event, EventKind
from protocol.messages import IceServer
from protocol.qr import (
    MODEL_PATTERN,
    TOKEN_PATTERN,
    WIFI_PASSWORD_PATTERN,
    check_ssid,
    check_wifi_password,
)

Role = Literal["owner", "viewer"]
DeviceName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
]
Email = Annotated[
    str,
    Field(
        max_length=254,
        pattern=r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$",
        description="Compared case-insensitively",
        examples=["ana@example.com"],
    ),
]
ObjectIdStr = Annotated[str, Field(description="Opaque id", examples=["665f1c2e9b1e8a0a1b2c3d4e"])]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    pass


class ErrorDetail(Response):
    code: ErrorCode
    message: str


class ErrorBody(Response):
    error: ErrorDetail


# accounts -------------------------------------------------------------------------------


class Credentials(Request):
    email: Email
    password: str = Field(min_length=1, max_length=128)


class NewAccount(Request):
    email: Email
    password: str = Field(
        min_length=10,
        max_length=128,
        description="At least 10 characters, not a common password, not your email",
    )


class UserOut(Response):
    id: ObjectIdStr
    email: str
    created_at: datetime


class TokenPair(Response):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")


class RefreshRequest(Request):
    refresh_token: str = Field(min_length=1, max_length=256)


class PasswordChange(Request):
    current_password: str = Field(min_length=1, max_length=128)
    new_password: str = Field(
        min_length=10,
        max_length=128,
        description="At least 10 characters, not a common password, not your email",
    )


class AccountRemoval(Request):
    password: str = Field(min_length=1, max_length=128, description="The account's password")


# onboarding -----------------------------------------------------------------------------


class OnboardingRequest(Request):
    device_name: DeviceName
    camera_model: Annotated[str, Field(pattern=MODEL_PATTERN)]
    wifi_ssid: str = Field(
        min_length=1,
        max_length=32,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The Wi-Fi network name: at most 32 bytes in UTF-8",
    )
    wifi_password: str = Field(
        default="",
        repr=False,
        pattern=WIFI_PASSWORD_PATTERN,
        description="Empty (open network), 8-63 printable ASCII characters, or 64 hex digits. "
        "Never stored: it only goes into the QR payload.",
    )

    @field_validator("wifi_ssid")
    @classmethod
    def _ssid(cls, value: str) -> str:
        return check_ssid(value)

    @field_validator("wifi_password")
    @classmethod
    def _password(cls, value: str) -> str:
        return check_wifi_password(value)


class OnboardingTicketOut(Response):
    ticket_id: ObjectIdStr
    payload: str = Field(description="The QR text, to be shown to the camera")
    qr_png: str = Field(description="data:image/png;base64,... of the QR code")
    qr_svg: str = Field(description="The QR code as an SVG document")
    expires_at: datetime


class OnboardingStatus(Response):
    ticket_id: ObjectIdStr
    status: Literal["pending", "activated", "expired"]
    device_id: ObjectIdStr | None = None
    expires_at: datetime


class ActivateRequest(Request):
    token: str = Field(pattern=TOKEN_PATTERN)
    device_uid: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9:._-]{3,63}$")
    camera_model: Annotated[str, Field(pattern=MODEL_PATTERN)]
    firmware_version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
    public_key: str = Field(
        pattern=r"^[A-Za-z0-9_-]{43}=?$",
        description="Raw 32-byte Ed25519 public key, URL-safe base64",
    )


class ActivateResponse(Response):
    device_id: ObjectIdStr
    device_name: str
    signaling_url: str


# devices and sharing --------------------------------------------------------------------


Point = Annotated[list[Annotated[float, Field(ge=0.0, le=1.0)]], Field(min_length=2, max_length=2)]
Polygon = Annotated[list[Point], Field(min_length=3, max_length=16)]


class MotionSettings(Request):
    """How the relay detects motion on this camera (fractions of the picture, 0..1)."""

    sensitivity: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Higher finds fainter changes"
    )
    min_area: float = Field(
        default=0.005, ge=0.0005, le=0.5, description="Smallest moving area that counts"
    )
    zones: list[Polygon] = Field(
        default_factory=list, max_length=8, description="Where motion counts (empty: everywhere)"
    )
    masks: list[Polygon] = Field(
        default_factory=list, max_length=8, description="Where it never does"
    )


AnalysisMode = Literal["continuous", "on_motion"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ClockTime = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class ArmedWindow(Request):
    """A weekly window in which the camera is armed: ``start`` to ``end`` on each of ``days``
    (local time of the schedule's ``timezone``; an ``end`` at or before ``start`` runs past
    midnight into the next day)."""

    days: list[Weekday] = Field(min_length=1, max_length=7)
    start: ClockTime
    end: ClockTime


class Schedule(Request):
    """When an armed camera is analysed (outside every window it counts as disarmed)."""

    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA name")
    windows: list[ArmedWindow] = Field(min_length=1, max_length=28)

    @model_validator(mode="after")
    def _known_timezone(self) -> Self:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone[:64]!r}") from None
        return self


class AnalysisState(Response):
    """Who analyses the camera now: ``active`` (a relay node, ``relay_id``, is assigned to
    it), ``waiting_for_relay`` (armed and online, but no relay node can take it),
    ``disarmed`` (off, or outside its schedule) or ``offline`` (the camera is)."""

    state: Literal["active", "waiting_for_relay", "disarmed", "offline"]
    relay_id: str | None = None


class DeviceOut(Response):
    id: ObjectIdStr
    name: str
    camera_model: str
    firmware_version: str
    role: Role
    online: bool
    last_seen: datetime | None
    activated_at: datetime
    motion: MotionSettings
    armed: bool
    analysis_mode: AnalysisMode
    schedule: Schedule | None
    analysis: AnalysisState


class DeviceList(Response):
    devices: list[DeviceOut]


class DeviceUpdate(Request):
    """PATCH /devices/{id}: any of the fields; at least one."""

    name: DeviceName | None = None
    motion: MotionSettings | None = None
    armed: bool | None = Field(default=None, strict=True)
    analysis_mode: AnalysisMode | None = None
    schedule: Schedule | None = Field(
        default=None, description="A weekly schedule; null removes it (always armed)"
    )


class RelayDeviceOut(Response):
    """What a relay needs to analyse a camera's stream."""

    device_id: ObjectIdStr
    motion: MotionSettings


class ShareRequest(Request):
    email: Email
    role: Literal["viewer"] = "viewer"


class ShareOut(Response):
    user_id: ObjectIdStr
    email: str
    role: Literal["viewer"]
    created_at: datetime


class ShareList(Response):
    shares: list[ShareOut]


class IceServersOut(Response):
    ice_servers: list[IceServer]
    ttl: int = Field(description="Seconds the TURN credentials stay valid")


class EventList(Response):
    events: list[Event]
    next_cursor: str | None = Field(description="Pass as cursor= for the next (older) page")


def _rfc3339(value: object) -> object:
    """Query times must be RFC 3339 text (pydantic alone would also read numbers as epochs)."""
    if isinstance(value, str) and not re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value
    ):
        raise ValueError("expected an RFC 3339 time such as 2026-01-31T08:00:00Z")
    return value


Rfc3339 = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class EventQuery(Request):
    device_id: str | None = Field(default=None, max_length=64)
    kind: EventKind | None = None
    since: Rfc3339 | None = None
    until: Rfc3339 | None = None
    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class Health(Response):
    status: Literal["ok"]


class Readiness(Response):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool]


# media (docs/protocol.md, "Media") -------------------------------------------------------

MediaKind = Literal["clip", "recording", "snapshot", "upload"]
MediaState = Literal["recording", "ready", "failed"]
UploadAnalysisState = Literal["pending", "analysing", "analysed", "failed"]


class MediaOut(Response):
    """A clip, recording, snapshot or uploaded video. ``state``: ``recording`` while its
    content still grows (a clip during its event), ``ready`` when complete, ``failed``
    (``error`` says why). Uploads also carry ``analysis`` and ``progress``."""

    id: ObjectIdStr
    device_id: ObjectIdStr
    kind: MediaKind
    content_type: str
    size: int = Field(ge=0, description="Bytes of content stored now")
    state: MediaState
    created_at: datetime
    expires_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    thread_id: str | None = Field(default=None, description="The event thread of a clip")
    filename: str | None = Field(default=None, description="An upload's file name")
    error: str | None = None
    analysis: UploadAnalysisState | None = Field(
        default=None, description="Uploads: where the relay's analysis of the file stands"
    )
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    content_url: str | None = Field(
        default=None,
        description="GET it for the bytes without an Authorization header (a <video src>): "
        "it carries a token for you that expires in minutes. None while there is no content.",
    )


class MediaList(Response):
    media: list[MediaOut]
    next_cursor: str | None = Field(description="Pass as cursor= for the next (older) page")


class MediaQuery(Request):
    kind: MediaKind | None = None
    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class MediaContentQuery(Request):
    token: str | None = Field(
        default=None, max_length=200, description="From content_url; replaces Authorization"
    )


class ClipUploadQuery(Request):
    """``PUT /relays/devices/{id}/clips/{thread_id}``: the body is the whole clip so far."""

    started_at: Rfc3339 | None = Field(default=None, description="When the clip starts")
    final: bool = Field(default=False, description="True on the last upload of the clip")
    duration_s: float | None = Field(default=None, ge=0.0, le=86_400.0)


class UploadQuery(Request):
    filename: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f/\\]+$"
    )


class UploadProgress(Request):
    """A relay node's report on an uploaded video it analyses."""

    analysis: UploadAnalysisState
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    error: str | None = Field(default=None, max_length=500)


class MediaUsage(Response):
    used_bytes: int
    quota_bytes: int
    retention_days: int
    by_kind: dict[str, int] = Field(description="Bytes per media kind")


class RecordingRequest(Request):
    """``POST /devices/{id}/recordings``: record the camera from now (plus its pre-roll
    when a relay node was already watching it) for ``duration_s``."""

    duration_s: int = Field(strict=True, ge=1, le=600, description="Seconds, at most 10 minutes")
