"""A camera's recent sessions for its owner: "why relayed?" (docs/protocol.md, "Session
statistics").

Each session record (``cloud.signaling.models``) holds the cloud's route and what each side
reported with ``session.stats``; :func:`route_and_reason` turns them into the session's route
and a plain-words reason.
"""

import base64
import binascii
import json
from datetime import datetime
from typing import Any, Literal

from beanie import PydanticObjectId
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from cloud.context import user
from cloud.devices.access import Action, authorize
from cloud.errors import Malformed
from cloud.http import parse_query, reply
from cloud.signaling.models import SessionRecord, SideStats
from protocol.api import Request as RequestBody
from protocol.api import Response as ResponseBody
from protocol.messages import CandidateType, StatsRoute, TransportProtocol

SAME_NETWORK = "Direct, same network"
HOLE_PUNCHING = "Direct, through the routers (hole punching)"
TURN_UDP = "Relayed by TURN: this network blocks direct connections"
TURN_TCP = "Relayed by TURN over TCP: this network blocks UDP"
RELAY_NODE = "Through a relay node"


def route_and_reason(
    cloud_route: str, viewer: SideStats | None, camera: SideStats | None
) -> tuple[StatsRoute, str | None]:
    """The session's route and why it took it, in plain words (None: no side reported).

    ``relay`` when the cloud routed the session through a relay node; otherwise ``turn``
    when either side's selected pair has a ``relay`` candidate (a side may see the other's
    TURN address as ``prflx`` when its candidate came late), over TCP when a side whose own
    candidate is ``relay`` reaches its TURN server over TCP; otherwise ``p2p``, "same
    network" when both candidates are ``host`` as the viewer sees them (the camera's report
    when the viewer sent none: a browser hides its host address behind an mDNS name, so a
    camera sees it as ``prflx`` even on the same network), "hole punching" when not.
    """
    if cloud_route == "relay":
        return "relay", RELAY_NODE
    reports = [s for s in (viewer, camera) if s is not None]
    turned = [s for s in reports if "relay" in (s.local_candidate_type, s.remote_candidate_type)]
    if turned:
        tcp = any(s.local_candidate_type == "relay" and s.protocol == "tcp" for s in turned)
        return "turn", TURN_TCP if tcp else TURN_UDP
    if not reports:
        return "p2p", None
    seen = reports[0]
    direct = seen.local_candidate_type == seen.remote_candidate_type == "host"
    return "p2p", SAME_NETWORK if direct else HOLE_PUNCHING


class SessionQuery(RequestBody):
    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class SideStatsOut(ResponseBody):
    """What one side reported (``session.stats``); candidate types as that side sees them."""

    route: StatsRoute
    local_candidate_type: CandidateType
    remote_candidate_type: CandidateType
    protocol: TransportProtocol = Field(
        description="The side's first hop: to its TURN server when its candidate is relay"
    )
    ice_ms: int = Field(description="From the side's offer (sent or received) to ICE connected")
    ttff_ms: int | None = Field(description="Viewers: from session.request to the first frame")
    reported_at: datetime


class SessionOut(ResponseBody):
    session_id: str
    viewer: Literal["user", "relay_node"] = Field(
        description="relay_node: a relay node's own session with the camera, serving viewers"
    )
    viewer_id: str | None = Field(description="The viewer's user id (null for a relay node)")
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None = Field(description="null while the session is live")
    end_reason: str | None
    route: StatsRoute = Field(
        description="relay: through a relay node; turn: through a TURN server; p2p: direct"
    )
    reason: str | None = Field(description="Why this route, in plain words; null: no report")
    ice_ms: int | None = Field(description="The viewer's ICE duration (else the camera's)")
    ttff_ms: int | None = Field(description="The viewer's time to first frame")
    viewer_stats: SideStatsOut | None
    camera_stats: SideStatsOut | None = Field(
        description="The camera's report (the relay node's, for a session through one)"
    )


class SessionList(ResponseBody):
    sessions: list[SessionOut]
    next_cursor: str | None = Field(description="Pass as cursor= for the next (older) page")


def session_out(record: SessionRecord) -> SessionOut:
    viewer, camera = record.viewer_stats, record.camera_stats
    route, reason = route_and_reason(record.route, viewer, camera)
    relay_node = record.viewer_role == "relay"
    return SessionOut(
        session_id=record.session_id,
        viewer="relay_node" if relay_node else "user",
        viewer_id=None if relay_node else record.viewer_id,
        started_at=record.created_at,
        answered_at=record.answered_at,
        ended_at=record.ended_at,
        end_reason=record.end_reason,
        route=route,
        reason=reason,
        ice_ms=viewer.ice_ms if viewer else camera.ice_ms if camera else None,
        ttff_ms=viewer.ttff_ms if viewer else None,
        viewer_stats=_side(viewer),
        camera_stats=_side(camera),
    )


def _side(stats: SideStats | None) -> SideStatsOut | None:
    return None if stats is None else SideStatsOut(**stats.model_dump())


def _cursor(encoded: str) -> tuple[datetime, PydanticObjectId]:
    try:
        started, record_id = json.loads(
            base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        )
        return datetime.fromisoformat(started), PydanticObjectId(record_id)
    except (ValueError, TypeError, binascii.Error):
        raise Malformed("cursor is not one this server returned") from None


def _next_cursor(record: SessionRecord) -> str:
    raw = json.dumps([record.created_at.isoformat(), str(record.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def list_sessions(request: Request) -> Response:
    """A camera's sessions, newest first; its owner only (a viewer it is shared with: 403)."""
    access = await authorize(user(request), request.path_params["device_id"], Action.CONTROL)
    query = parse_query(request, SessionQuery)
    conditions: dict[str, Any] = {"device_id": access.device.id}
    if query.cursor:
        at, last = _cursor(query.cursor)
        conditions["$or"] = [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": last}}]
    records = (
        await SessionRecord.find(conditions)
        .sort("-created_at", "-_id")
        .limit(query.limit + 1)
        .to_list()
    )
    page = records[: query.limit]
    cursor = _next_cursor(page[-1]) if len(records) > query.limit else None
    return reply(SessionList(sessions=[session_out(r) for r in page], next_cursor=cursor))
