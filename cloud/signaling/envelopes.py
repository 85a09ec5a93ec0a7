"""What the cloud's instances tell each other over the bus (cloud.signaling.bus), typed.

On the wire an envelope is a JSON object whose ``kind`` names its class (:func:`encode`,
:func:`decode`); in the hub it is one of the classes below, so that what crossed the bus
can be named (a fault test's oracle, a log line) and a field cannot be misspelt.

- A session's two sides (cloud.signaling.hub) talk with :class:`Open`, :class:`Accepted`,
  :class:`Offer`, :class:`Answer`, :class:`Ice` and :class:`End`, on the camera's channel
  (``dev.<device id>``) and the connection channels of viewers and relay nodes
  (``conn.<connection id>``).
- :class:`Takeover`: a camera connected on another instance (its device channel).
- :class:`Snapshot`: ask a camera, or the relay node watching it, for a JPEG.
- :class:`Push`: a message for a user's connections (``user.<user id>``).
- Broadcast to every instance: :class:`Access` (grants revoked) and :class:`Gone` (a
  camera's or relay node's instance died).
"""

from dataclasses import dataclass, fields
from typing import Any, ClassVar

Grants = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Open:
    """A viewer asks for a session: to the camera's channel, or the relay node's."""

    kind: ClassVar[str] = "open"
    session: str
    viewer: str  # the viewer's connection id
    user: str
    device: str
    grants: Grants


@dataclass(frozen=True, slots=True)
class Accepted:
    kind: ClassVar[str] = "accepted"
    session: str


@dataclass(frozen=True, slots=True)
class Offer:
    kind: ClassVar[str] = "offer"
    session: str
    sdp: str


@dataclass(frozen=True, slots=True)
class Answer:
    kind: ClassVar[str] = "answer"
    session: str
    sdp: str


@dataclass(frozen=True, slots=True)
class Ice:
    """A trickled candidate, or (``candidate`` None) its end."""

    kind: ClassVar[str] = "ice"
    session: str
    candidate: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class End:
    kind: ClassVar[str] = "end"
    session: str
    reason: str


@dataclass(frozen=True, slots=True)
class Takeover:
    kind: ClassVar[str] = "takeover"
    conn: str  # the camera's new connection


@dataclass(frozen=True, slots=True)
class Snapshot:
    kind: ClassVar[str] = "snapshot"
    request: str
    device: str


@dataclass(frozen=True, slots=True)
class Push:
    kind: ClassVar[str] = "push"
    message: dict[str, Any]  # a server-to-client message, already dumped


@dataclass(frozen=True, slots=True)
class Access:
    kind: ClassVar[str] = "access"
    id: str  # the AccessChange
    device: str  # "" for sign-ins
    grants: Grants
    reason: str


@dataclass(frozen=True, slots=True)
class Gone:
    kind: ClassVar[str] = "gone"
    device: str  # a device id, or relay:<relay id>


Envelope = Open | Accepted | Offer | Answer | Ice | End | Takeover | Snapshot | Push | Access | Gone
SessionEnvelope = Open | Accepted | Offer | Answer | Ice | End
SESSION_ENVELOPES = (Open, Accepted, Offer, Answer, Ice, End)
KINDS: dict[str, type[Envelope]] = {
    cls.kind: cls
    for cls in (Open, Accepted, Offer, Answer, Ice, End, Takeover, Snapshot, Push, Access, Gone)
}
_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in KINDS.values()}


class BadEnvelope(ValueError):
    """Not an envelope this version knows."""


def encode(envelope: Envelope) -> dict[str, Any]:
    """The JSON object for the bus."""
    wire: dict[str, Any] = {"kind": envelope.kind}
    for name in _FIELDS[type(envelope)]:
        value = getattr(envelope, name)
        wire[name] = list(value) if isinstance(value, tuple) else value
    return wire


def decode(wire: dict[str, Any]) -> Envelope:
    """The envelope a JSON object from the bus holds; :class:`BadEnvelope` otherwise."""
    cls = KINDS.get(str(wire.get("kind")))
    if cls is None:
        raise BadEnvelope(f"unknown envelope kind {wire.get('kind')!r}")
    names = _FIELDS[cls]
    if missing := set(names) - set(wire):  # a field added by a newer instance is ignored
        raise BadEnvelope(f"{cls.kind}: no {', '.join(sorted(missing))}")
    values: dict[str, Any] = {n: tuple(wire[n]) if n == "grants" else wire[n] for n in names}
    return cls(**values)
