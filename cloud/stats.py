"""``GET /api/v1/stats``: the dashboard's figures over the caller's own cameras.

Shared cameras are their owner's: a viewer sees none of them here. Every read is bounded by
the owner's cameras (indexed by ``owner_id``) and the window (events and sessions are indexed
by camera and start time); at most :data:`MAX_ROWS` events and sessions are read.
"""

import statistics
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta

from starlette.requests import Request
from starlette.responses import Response

from cloud.context import context, require_user, user
from cloud.devices.models import Device
from cloud.devices.sessions import route_and_reason
from cloud.events.models import EventThread
from cloud.http import Endpoint, reply
from cloud.media.catalog import limits, usage
from cloud.signaling.models import SessionRecord
from protocol.api import MediaUsage
from protocol.messages import StatsRoute
from protocol.stats import CameraCounts, DayEvents, Stats

WINDOW_DAYS = 7
MAX_ROWS = 50_000
ROUTES: tuple[StatsRoute, ...] = ("p2p", "turn", "relay")


async def get_stats(request: Request) -> Response:
    principal = user(request)
    now = datetime.now(UTC)
    today = now.date()
    days = [today - timedelta(days=n) for n in range(WINDOW_DAYS - 1, -1, -1)]
    start = datetime.combine(days[0], time(), UTC)

    devices = await Device.find(Device.owner_id == principal.user_id).to_list()
    ids = [d.id for d in devices]

    per_day: dict[date, Counter[str]] = {day: Counter() for day in days}
    events = EventThread.find({"device_id": {"$in": ids}, "started_at": {"$gte": start}})
    for event in await events.limit(MAX_ROWS).to_list():
        day = (
            event.started_at.astimezone(UTC).date()
            if event.started_at.tzinfo
            else event.started_at.date()
        )
        if day in per_day:
            per_day[day][event.kind] += 1

    routes: Counter[StatsRoute] = Counter()
    ttff: list[int] = []
    sessions = SessionRecord.find(
        {"device_id": {"$in": ids}, "created_at": {"$gte": start}, "viewer_role": "user"}
    )
    for record in await sessions.limit(MAX_ROWS).to_list():
        route, _ = route_and_reason(record.route, record.viewer_stats, record.camera_stats)
        routes[route] += 1
        if record.viewer_stats is not None and record.viewer_stats.ttff_ms is not None:
            ttff.append(record.viewer_stats.ttff_ms)

    limit = await limits(principal.user_id, context(request).settings)
    by_kind = await usage(principal.user_id)
    return reply(
        Stats(
            generated_at=now,
            window_days=WINDOW_DAYS,
            cameras=CameraCounts(owned=len(devices), online=sum(d.online for d in devices)),
            events_per_day=[
                DayEvents(day=day, total=sum(per_day[day].values()), by_kind=dict(per_day[day]))
                for day in days
            ],
            sessions_by_route={route: routes[route] for route in ROUTES},
            median_ttff_ms=round(statistics.median(ttff)) if ttff else None,
            storage=MediaUsage(
                used_bytes=sum(by_kind.values()),
                quota_bytes=limit.quota_bytes,
                retention_days=limit.retention_days,
                by_kind=by_kind,
            ),
        )
    )


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/stats",
        get_stats,
        "Your own cameras at a glance: online now, events per day, sessions by route,"
        " time to first frame, storage against quota (the last 7 days)",
        "stats",
        response=Stats,
        auth=require_user,
    ),
]
