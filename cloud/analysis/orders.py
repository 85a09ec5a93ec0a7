"""What each relay node connected to this instance analyses: its ``relay.assign``.

Every instance runs the assignment (cloud.analysis.assignment) every second, then sends each
relay node it holds the cameras and uploads now assigned to it, when they changed since
the last time it was told (a node that just connected has been told nothing).
"""

import logging
from collections.abc import Awaitable, Callable

from cloud.analysis import assignment
from protocol.messages import Message, RelayAssign

log = logging.getLogger(__name__)

NOTHING_ASSIGNED = RelayAssign(cameras=[])


class RelayOrders:
    def __init__(self) -> None:
        self._sent: dict[str, RelayAssign] = {}  # by relay connection
        self._idle = assignment.IdleReads()  # no device reads while no node is live

    async def step(
        self, relays: dict[str, str], send: Callable[[str, Message], Awaitable[None]]
    ) -> None:
        """Assign, then ``send(conn, relay.assign)`` to each of ``relays`` (connection id ->
        relay id, those held here) whose orders changed."""
        await assignment.assign(idle=self._idle)
        cameras = await assignment.cameras_of(set(relays.values()))
        uploads = await assignment.uploads_of(set(relays.values()))
        for conn in set(self._sent) - set(relays):
            del self._sent[conn]
        for conn, relay_id in relays.items():
            theirs = RelayAssign(cameras=cameras.get(relay_id, []), uploads=uploads[relay_id])
            if self._sent.get(conn, NOTHING_ASSIGNED) != theirs:
                self._sent[conn] = theirs
                log.info(
                    "relay %s: %d cameras, %d uploads",
                    relay_id,
                    len(theirs.cameras),
                    len(theirs.uploads),
                )
                await send(conn, theirs)
