"""What every WebSocket signaling message shares on the wire (docs/protocol.md, "WebSocket
signaling"): the base model and the ids that several messages carry.

Its own module so that the message modules (:mod:`protocol.sessions`,
:mod:`protocol.relays`, :mod:`protocol.devices`) and :mod:`protocol.messages`, which gathers
them into the unions it decodes, import it without importing each other.
"""

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

RequestId = Annotated[str, Field(min_length=1, max_length=64)]
SessionId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
DeviceId = Annotated[str, Field(min_length=1, max_length=64)]


class Message(BaseModel):
    """A message as sent: unknown fields are refused, and :meth:`dump` leaves out None."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)

    def text(self) -> str:
        return json.dumps(self.dump(), separators=(",", ":"))
