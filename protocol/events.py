"""Events (docs/protocol.md, "Events"): one thread per continuous activity, new -> update -> end."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

EventState = Literal["new", "update", "end"]
EventSource = Literal["live", "upload"]  # the camera's stream, or a video file its owner sent
EventKind = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9 _-]{0,31}$",
        description='"motion", "person", "vehicle" or another COCO label',
        examples=["motion", "person"],
    ),
]
Box = Annotated[
    list[Annotated[float, Field(ge=0.0, le=1.0)]],
    Field(min_length=4, max_length=4, description="[x, y, w, h], fractions of the picture"),
]
ThreadId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class Event(BaseModel):
    """An event thread as apps see it; ``state`` is its latest state."""

    id: str
    device_id: str
    kind: EventKind
    state: EventState
    thread_id: ThreadId
    score: float = Field(ge=0.0, le=1.0)
    box: Box | None = None
    started_at: datetime
    ended_at: datetime | None = None
    snapshot_url: str | None = None
    acknowledged: bool = False
    clip_id: str | None = Field(default=None, description="The thread's clip: GET /media/{id}")
    source: EventSource = "live"
    upload_id: str | None = Field(default=None, description="source upload: the video file")
    offset_s: float | None = Field(default=None, description="source upload: where it starts")
    end_offset_s: float | None = Field(default=None, description="and where it ends")


class EventReport(BaseModel):
    """What a relay node sends for each state change of a thread (``POST /relays/events``)."""

    model_config = ConfigDict(extra="forbid")

    device_id: Annotated[str, Field(min_length=1, max_length=64)]
    thread_id: ThreadId
    kind: EventKind
    state: EventState
    score: float = Field(ge=0.0, le=1.0)
    box: Box | None = None
    started_at: datetime
    ended_at: datetime | None = None
    snapshot_jpeg: str | None = Field(
        default=None, max_length=700_000, description="JPEG snapshot, standard base64"
    )
    source: EventSource = "live"
    upload_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    offset_s: float | None = Field(default=None, ge=0.0)
    end_offset_s: float | None = Field(default=None, ge=0.0)
