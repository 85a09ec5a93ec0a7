"""Who may open a session, under which grants and by which route (``session.request``).

A viewer may watch a camera the database's access rule lets it see (cloud.devices.access),
under the grants that check relied on; with mode ``relay`` through a relay node allocated to
it now. A relay node may watch a camera while it serves a viewer of it, or while it analyses
it (cloud.analysis.assignment), under the camera's binding. Cameras request nothing.

The database is read outside the hub's lock and the hub is stepped under it twice at most,
so a slow read holds up no other connection; the price is that access may be revoked
between the read and the step, which the hub catches (:meth:`Hub.request_session`).
"""

import asyncio
import logging
import time

from beanie import PydanticObjectId

from cloud.analysis import assignment
from cloud.auth.tokens import UserPrincipal
from cloud.devices.access import Action, authorize, binding
from cloud.errors import CloudError, Unavailable, outage_unavailable
from cloud.relays import registry
from cloud.signaling.deliveries import Delivery, Role, Send
from cloud.signaling.hub import Hub
from protocol.errors import ErrorCode
from protocol.messages import SessionRequest, Status, StatusError

log = logging.getLogger(__name__)


async def serve(
    hub: Hub, lock: asyncio.Lock, conn: str, role: Role, principal: str, request: SessionRequest
) -> list[Delivery]:
    """The hub's answer to a ``session.request`` from local connection ``conn``; ``lock`` is
    the one every step of ``hub`` takes."""
    try:
        with outage_unavailable():
            return await _decide(hub, lock, conn, role, principal, request)
    except Unavailable as exc:
        # The database is away (issue 16): answer, so the app can say "try again",
        # rather than let the request go unanswered until the app's own timeout.
        log.warning("session.request %s not served: %s", request.id, exc.message)
        return _refused(conn, request, exc.code, exc.message)


async def _decide(
    hub: Hub, lock: asyncio.Lock, conn: str, role: Role, principal: str, request: SessionRequest
) -> list[Delivery]:
    if role == "relay":
        # A relay watches a camera while it serves a viewer of it, or analyses it.
        async with lock:
            grants = hub.relay_serves(conn, request.device_id)
        if grants is None:
            device = await assignment.assigned_to(principal, request.device_id)
            grants = None if device is None else (binding(device),)
        async with lock:
            if grants is not None:
                return hub.request_session(conn, request, time.monotonic(), None, grants)
            return hub.strike(
                conn,
                request.id,
                ErrorCode.FORBIDDEN,
                "this relay neither serves a viewer of it nor analyses it",
            )
    if role != "user":
        async with lock:
            return hub.strike(
                conn, request.id, ErrorCode.FORBIDDEN, "only viewers request sessions"
            )
    try:
        access = await authorize(
            UserPrincipal(PydanticObjectId(principal), ""), request.device_id, Action.VIEW
        )
    except CloudError as exc:
        return _refused(conn, request, exc.code, exc.message)
    relay: tuple[str, str] | None = None
    if request.mode == "relay":
        node = await registry.allocate(request.device_id)
        if node is None:
            return _refused(conn, request, ErrorCode.UNAVAILABLE, "no relay node is available")
        relay = (node.relay_id, node.connection_id)
    # Mode "auto" starts peer to peer; the client asks again with "relay" when ICE fails
    # or takes too long (it alone sees its network), as device_sim.viewer and web/ do.
    async with lock:
        return hub.request_session(conn, request, time.monotonic(), relay, access.grants)


def _refused(conn: str, request: SessionRequest, code: ErrorCode, message: str) -> list[Delivery]:
    error = StatusError(code=code, message=message)
    return [Send(conn, Status(id=request.id, ok=False, error=error))]
