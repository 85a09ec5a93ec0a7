"""No event thread is left open when the relay node reporting it leaves.

A node ends its threads when it stops analysing a camera, but a node that is killed, loses
its network or outlives its connection cannot (its late reports are refused: it is no
longer registered). So when a node's connection goes, or its presence expires with its
instance, the cloud ends each thread it left open: ``state: "end"``, ``ended_at`` the last
time the node reported it, pushed to the camera's audience like any other change.
"""

import logging
from collections.abc import Awaitable, Callable

from beanie import PydanticObjectId

from cloud.devices.access import audience
from cloud.events.models import EventThread, event_out
from protocol.messages import EventPush

log = logging.getLogger(__name__)

Push = Callable[[list[PydanticObjectId], EventPush], Awaitable[None]]


async def end_threads_of(relay_id: str, push: Push) -> int:
    """End every thread ``relay_id`` left open; the number ended."""
    ended = 0
    collection = EventThread.get_pymongo_collection()
    for doc in await EventThread.find({"relay_id": relay_id, "state": {"$ne": "end"}}).to_list():
        result = await collection.update_one(
            {"_id": doc.id, "state": doc.state, "updated_at": doc.updated_at},  # no newer report
            {"$set": {"state": "end", "ended_at": doc.updated_at}},
        )
        if result.modified_count != 1:
            continue
        ended += 1
        thread = doc.model_copy(update={"state": "end", "ended_at": doc.updated_at})
        out = event_out(thread)
        await push(await audience(doc.device_id), EventPush(**out.model_dump()))
        log.info("event %s of device %s ended: relay %s left", doc.id, doc.device_id, relay_id)
    return ended
