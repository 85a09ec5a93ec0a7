"""Per-user, per-camera push preferences: which kinds, and quiet hours. A camera without a
stored preference pushes every kind (motion included) at any hour."""

from datetime import datetime
from zoneinfo import ZoneInfo

from beanie import PydanticObjectId
from starlette.requests import Request
from starlette.responses import Response

from cloud.context import require_user, user
from cloud.devices.access import Action, authorize, visible_devices
from cloud.http import Endpoint, parse_body, reply
from cloud.notify.models import NotifyCooldown, NotifyPreference
from protocol.notify import PreferenceList, PreferenceOut, PreferenceUpdate, QuietHours


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def in_quiet_hours(quiet: dict[str, str] | None, at: datetime) -> bool:
    if not quiet:
        return False
    local = at.astimezone(ZoneInfo(quiet["timezone"]))
    now = local.hour * 60 + local.minute
    start, end = _minutes(quiet["start"]), _minutes(quiet["end"])
    if start < end:
        return start <= now < end
    return now >= start or now < end  # past midnight


def wants(pref: NotifyPreference | None, kind: str, at: datetime) -> bool:
    """Whether a ``new`` push of ``kind`` goes to this preference's user now."""
    if pref is None:
        return True
    if pref.kinds is not None and kind not in pref.kinds:
        return False
    return not in_quiet_hours(pref.quiet_hours, at)


async def preferences_of(
    users: list[PydanticObjectId], device_id: PydanticObjectId
) -> dict[PydanticObjectId, NotifyPreference]:
    docs = await NotifyPreference.find(
        {"user_id": {"$in": users}, "device_id": device_id}
    ).to_list()
    return {d.user_id: d for d in docs}


async def forget_device(device_id: PydanticObjectId) -> None:
    """A removed camera's preferences and cooldowns go with it."""
    await NotifyPreference.find(NotifyPreference.device_id == device_id).delete()
    await NotifyCooldown.find(NotifyCooldown.device_id == device_id).delete()


def _out(device_id: str, name: str, pref: NotifyPreference | None) -> PreferenceOut:
    quiet = QuietHours.model_validate(pref.quiet_hours) if pref and pref.quiet_hours else None
    return PreferenceOut(
        device_id=device_id,
        device_name=name,
        kinds=pref.kinds if pref else None,
        quiet_hours=quiet,
    )


async def list_preferences(request: Request) -> Response:
    principal = user(request)
    accesses = await visible_devices(principal)
    docs = await NotifyPreference.find(NotifyPreference.user_id == principal.user_id).to_list()
    by_device = {d.device_id: d for d in docs}
    rows = [
        _out(str(a.device.id), a.device.name, by_device.get(a.device.id))  # type: ignore[arg-type]
        for a in accesses
    ]
    return reply(PreferenceList(preferences=rows))


async def put_preference(request: Request) -> Response:
    principal = user(request)
    access = await authorize(principal, request.path_params["device_id"], Action.VIEW)
    body = await parse_body(request, PreferenceUpdate)
    device = access.device
    assert device.id is not None
    kinds = sorted(set(body.kinds)) if body.kinds is not None else None
    quiet = body.quiet_hours.model_dump() if body.quiet_hours else None
    await NotifyPreference.get_pymongo_collection().update_one(
        {"user_id": principal.user_id, "device_id": device.id},
        {"$set": {"kinds": kinds, "quiet_hours": quiet}},
        upsert=True,
    )
    pref = await NotifyPreference.find_one(
        NotifyPreference.user_id == principal.user_id, NotifyPreference.device_id == device.id
    )
    return reply(_out(str(device.id), device.name, pref))


TAG = "notifications"
ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/notifications/preferences",
        list_preferences,
        "Your push preferences: one row per camera you may see (kinds null: every kind)",
        TAG,
        response=PreferenceList,
        auth=require_user,
    ),
    Endpoint(
        "PUT",
        "/api/v1/notifications/preferences/{device_id}",
        put_preference,
        "Set which kinds of this camera's events are pushed to you, and quiet hours",
        TAG,
        body=PreferenceUpdate,
        response=PreferenceOut,
        errors=(404, 422),
        auth=require_user,
    ),
]
