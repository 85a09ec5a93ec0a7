"""The relay registry: which relay nodes are connected, where, and how loaded."""

from datetime import datetime
from typing import Annotated

from beanie import Document, Indexed


class RelayNode(Document):
    relay_id: Annotated[str, Indexed(unique=True)]
    connection_id: str
    connected_at: datetime
    last_seen: datetime
    online: bool = True
    load: float = 0.0  # 0..1, reported by the relay
    sessions: int = 0
    capacity: int = 0  # cameras it can analyse at once (relay.load)

    class Settings:
        name = "relays"
