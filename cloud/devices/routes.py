"""Device routes: list, get, rename, remove; sharing by email; recent sessions
(docs/protocol.md)."""

import logging
from typing import Any

from pymongo.errors import DuplicateKeyError
from starlette.requests import Request
from starlette.responses import Response

from cloud.analysis.assignment import LiveRelay, analysis_state, live_relays, schedule_of
from cloud.auth.models import User
from cloud.auth.routes import normalise_email
from cloud.auth.tokens import now
from cloud.context import context, require_user, user
from cloud.devices.access import (
    Action,
    DeviceAccess,
    authorize,
    binding,
    parse_id,
    record_change,
    share_grant,
    visible_devices,
)
from cloud.devices.models import Device, Share
from cloud.devices.sessions import SessionList, SessionQuery, list_sessions
from cloud.errors import Conflict, Invalid, NotFound
from cloud.events.models import EventSnapshot, EventThread
from cloud.http import Endpoint, parse_body, reply
from cloud.media.catalog import delete_device_media, media_store
from cloud.notify.notifier import notifier
from protocol.api import (
    DeviceList,
    DeviceOut,
    DeviceUpdate,
    MotionSettings,
    ShareList,
    ShareOut,
    ShareRequest,
)
from protocol.errors import ErrorCode

log = logging.getLogger(__name__)


def device_out(access: DeviceAccess, live: dict[str, LiveRelay]) -> DeviceOut:
    """The device as its owner or a viewer sees it; ``live``: the relay nodes up now."""
    d = access.device
    return DeviceOut(
        id=str(d.id),
        name=d.name,
        camera_model=d.camera_model,
        firmware_version=d.firmware_version,
        role=access.role,
        online=d.online,
        last_seen=d.last_seen,
        activated_at=d.activated_at,
        motion=motion_of(d),
        armed=d.armed,
        analysis_mode=d.analysis_mode,
        schedule=schedule_of(d),
        analysis=analysis_state(d, live, now()),
    )


def motion_of(device: Device) -> MotionSettings:
    return MotionSettings.model_validate(device.motion or {})


async def list_devices(request: Request) -> Response:
    found = await visible_devices(user(request))
    live = await live_relays()
    return reply(DeviceList(devices=[device_out(a, live) for a in found]))


async def get_device(request: Request) -> Response:
    access = await authorize(user(request), request.path_params["device_id"], Action.VIEW)
    return reply(device_out(access, await live_relays()))


async def update_device(request: Request) -> Response:
    access = await authorize(user(request), request.path_params["device_id"], Action.CONTROL)
    body = await parse_body(request, DeviceUpdate)
    changes: dict[str, Any] = {}
    if body.name is not None:
        changes["name"] = body.name
    if body.motion is not None:
        changes["motion"] = body.motion.model_dump()
    if body.armed is not None:
        changes["armed"] = body.armed
    if body.analysis_mode is not None:
        changes["analysis_mode"] = body.analysis_mode
    if "schedule" in body.model_fields_set:  # null removes it
        changes["schedule"] = None if body.schedule is None else body.schedule.model_dump()
    if not changes:
        raise Invalid("send at least one of name, motion, armed, analysis_mode, schedule")
    await access.device.set(changes)
    if {"armed", "analysis_mode", "schedule"} & changes.keys():
        log.info("device %s analysis: %s", access.device.id, changes)
        context(request).signaling.reassign()
    return reply(device_out(access, await live_relays()))


async def delete_device(request: Request) -> Response:
    access = await authorize(user(request), request.path_params["device_id"], Action.CONTROL)
    await remove_device(request, access.device)
    return reply(None, 204)


async def remove_device(request: Request, device: Device) -> None:
    """Remove a camera and what is kept of it; its connection is closed (it stops)."""
    assert device.id is not None
    change = await record_change(device, [binding(device)], "device_removed")
    await Share.find(Share.device_id == device.id).delete()
    await device.delete()
    await context(request).signaling.enforce(change)
    # its events, clips, recordings, snapshots and uploads, its notification preferences
    threads = await EventThread.get_pymongo_collection().distinct("_id", {"device_id": device.id})
    await EventSnapshot.find({"event_id": {"$in": threads}}).delete()
    await EventThread.find(EventThread.device_id == device.id).delete()
    await delete_device_media(media_store(request), device.id)
    await notifier(request).device_removed(device.id)
    log.info("device %s removed by its owner", device.id)


async def share_device(request: Request) -> Response:
    owner = user(request)
    access = await authorize(owner, request.path_params["device_id"], Action.CONTROL)
    body = await parse_body(request, ShareRequest)
    friend = await User.find_one(User.email == normalise_email(body.email))
    if friend is None or friend.id is None:
        raise NotFound(
            "no account uses this email; ask them to register first", ErrorCode.USER_NOT_FOUND
        )
    if friend.id == owner.user_id:
        raise Conflict("you already own this camera", ErrorCode.ALREADY_SHARED)
    share = Share(device_id=access.device.id, user_id=friend.id, role=body.role, created_at=now())
    try:
        await share.insert()
    except DuplicateKeyError:
        raise Conflict(
            "the camera is already shared with this user", ErrorCode.ALREADY_SHARED
        ) from None
    log.info("device %s shared with user %s", access.device.id, friend.id)
    return reply(
        ShareOut(
            user_id=str(friend.id), email=friend.email, role=share.role, created_at=share.created_at
        ),
        201,
    )


async def list_shares(request: Request) -> Response:
    access = await authorize(user(request), request.path_params["device_id"], Action.CONTROL)
    shares = await Share.find(Share.device_id == access.device.id).sort("created_at").to_list()
    users = {
        u.id: u for u in await User.find({"_id": {"$in": [s.user_id for s in shares]}}).to_list()
    }
    return reply(
        ShareList(
            shares=[
                ShareOut(
                    user_id=str(s.user_id),
                    email=users[s.user_id].email,
                    role=s.role,
                    created_at=s.created_at,
                )
                for s in shares
                if s.user_id in users
            ]
        )
    )


async def revoke_share(request: Request) -> Response:
    access = await authorize(user(request), request.path_params["device_id"], Action.CONTROL)
    friend_id = parse_id(request.path_params["user_id"], "share")
    share = await Share.find_one(Share.device_id == access.device.id, Share.user_id == friend_id)
    if share is None:
        raise NotFound("the camera is not shared with this user", ErrorCode.SHARE_NOT_FOUND)
    change = await record_change(access.device, [share_grant(share)], "access_revoked")
    await share.delete()
    await context(request).signaling.enforce(change)
    log.info("device %s no longer shared with user %s", access.device.id, friend_id)
    return reply(None, 204)


TAG = "devices"
DEVICE = "/api/v1/devices/{device_id}"
ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/devices",
        list_devices,
        "Cameras you own or that are shared with you",
        TAG,
        response=DeviceList,
        auth=require_user,
    ),
    Endpoint(
        "GET",
        DEVICE,
        get_device,
        "One camera",
        TAG,
        response=DeviceOut,
        errors=(404,),
        auth=require_user,
    ),
    Endpoint(
        "PATCH",
        DEVICE,
        update_device,
        "Rename a camera or change its motion settings (owner)",
        TAG,
        body=DeviceUpdate,
        response=DeviceOut,
        errors=(403, 404),
        auth=require_user,
    ),
    Endpoint(
        "DELETE",
        DEVICE,
        delete_device,
        "Remove a camera (owner): unbinds it",
        TAG,
        status=204,
        errors=(403, 404),
        auth=require_user,
    ),
    Endpoint(
        "POST",
        DEVICE + "/shares",
        share_device,
        "Share a camera with a viewer (owner)",
        TAG,
        status=201,
        body=ShareRequest,
        response=ShareOut,
        errors=(403, 404, 409),
        auth=require_user,
    ),
    Endpoint(
        "GET",
        DEVICE + "/shares",
        list_shares,
        "Who a camera is shared with (owner)",
        TAG,
        response=ShareList,
        errors=(403, 404),
        auth=require_user,
    ),
    Endpoint(
        "DELETE",
        DEVICE + "/shares/{user_id}",
        revoke_share,
        "Stop sharing (owner)",
        TAG,
        status=204,
        errors=(403, 404),
        auth=require_user,
    ),
    Endpoint(
        "GET",
        DEVICE + "/sessions",
        list_sessions,
        "A camera's recent sessions, newest first, and why each took its route (owner)",
        TAG,
        query=SessionQuery,
        response=SessionList,
        errors=(400, 403, 404),
        auth=require_user,
        description="Each session: when it started and ended and why, the route (p2p, turn "
        "or relay) with its reason in plain words, and what the viewer and the camera "
        "reported with session.stats (selected candidate types, protocol, ICE duration, "
        "time to first frame).",
    ),
]
