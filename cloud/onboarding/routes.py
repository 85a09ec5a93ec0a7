"""Onboarding: the QR ticket an app shows, its status, and the camera's activation.

Activation is a small state machine on the ticket: ``pending`` -> ``claimed`` (one atomic
update, so exactly one of any number of racing cameras wins) -> ``activated``. A claimed
ticket whose device cannot be bound (the uid belongs to another owner) goes back to
``pending`` so the owner can retry with the right camera.
"""

import base64
import binascii
import logging
import secrets
from datetime import timedelta
from typing import Any

from beanie import PydanticObjectId
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError
from starlette.requests import Request
from starlette.responses import Response

from cloud.auth.tokens import now, token_hash
from cloud.context import client_address, context, require_user, user
from cloud.devices.access import binding, parse_id, record_change
from cloud.devices.models import AccessChange, Device
from cloud.errors import CloudError, Conflict, Gone, Invalid, NotFound
from cloud.http import Endpoint, parse_body, reply
from cloud.onboarding import qr
from cloud.onboarding.models import OnboardingTicket
from cloud.throttle import key
from protocol.api import (
    ActivateRequest,
    ActivateResponse,
    OnboardingRequest,
    OnboardingStatus,
    OnboardingTicketOut,
)
from protocol.errors import ErrorCode
from protocol.messages import DeviceActivated
from protocol.qr import QrPayload, encode_qr_payload

log = logging.getLogger(__name__)

ACTIVATION_WINDOW_S = 900


async def create_ticket(request: Request) -> Response:
    ctx = context(request)
    principal = user(request)
    body = await parse_body(request, OnboardingRequest)
    await ctx.throttle.limit(
        key("onboarding-user", str(principal.user_id)),
        ctx.settings.onboarding_tickets_per_hour,
        3600,
        "too many onboarding codes requested; try again later",
    )
    token = secrets.token_urlsafe(16)  # 128 bits
    created = now()
    ticket = OnboardingTicket(
        user_id=principal.user_id,
        token_hash=token_hash(token),
        device_name=body.device_name,
        camera_model=body.camera_model,
        created_at=created,
        expires_at=created + timedelta(seconds=ctx.settings.onboarding_ttl_s),
    )
    await ticket.insert()
    payload = encode_qr_payload(
        QrPayload(
            u=ctx.settings.public_url,
            t=token,
            s=body.wifi_ssid,
            p=body.wifi_password,
            m=body.camera_model,
        )
    )
    png, svg = await qr.render(payload)
    log.info("onboarding ticket %s created for model %s", ticket.id, body.camera_model)
    return reply(
        OnboardingTicketOut(
            ticket_id=str(ticket.id),
            payload=payload,
            qr_png=png,
            qr_svg=svg,
            expires_at=ticket.expires_at,
        ),
        201,
    )


async def ticket_status(request: Request) -> Response:
    ticket_id = parse_id(request.path_params["ticket_id"], "ticket")
    ticket = await OnboardingTicket.find_one(
        OnboardingTicket.id == ticket_id, OnboardingTicket.user_id == user(request).user_id
    )
    if ticket is None:
        raise NotFound("no such onboarding ticket", ErrorCode.TICKET_NOT_FOUND)
    if ticket.status == "activated":
        status = "activated"
    elif ticket.expires_at <= now():
        status = "expired"
    else:
        status = "pending"
    return reply(
        OnboardingStatus(
            ticket_id=str(ticket.id),
            status=status,
            device_id=str(ticket.device_id) if ticket.device_id else None,
            expires_at=ticket.expires_at,
        )
    )


def check_public_key(encoded: str) -> None:
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise Invalid("public_key is not a raw Ed25519 public key in URL-safe base64") from None


async def activate(request: Request) -> Response:
    ctx = context(request)
    failures = key("activation-failures", client_address(request))
    await ctx.throttle.check(
        failures,
        ctx.settings.activation_max_failures_per_address,
        "too many failed activations from this address; try again later",
    )
    body = await parse_body(request, ActivateRequest)
    check_public_key(body.public_key)
    try:
        device, ticket, rebound = await _activate(body)
    except (NotFound, Gone, Conflict, Invalid):
        await ctx.throttle.hit(failures, ACTIVATION_WINDOW_S)
        raise
    if rebound is not None:  # a re-onboarded camera: the old key's connection and sessions end
        await ctx.signaling.enforce(rebound)
    activated = DeviceActivated(ticket_id=str(ticket.id), device_id=str(device.id))
    await ctx.signaling.push([ticket.user_id], activated)
    signaling = ctx.settings.public_url.replace("http", "ws", 1) + "/ws/v1/device"
    return reply(
        ActivateResponse(
            device_id=str(device.id), device_name=device.name, signaling_url=signaling
        ),
        201,
    )


async def _activate(
    body: ActivateRequest,
) -> tuple[Device, OnboardingTicket, AccessChange | None]:
    """Claim the ticket and bind the device; (device, ticket, the old binding's end if the
    device was re-bound)."""
    tickets = OnboardingTicket.get_pymongo_collection()
    digest = token_hash(body.token)
    found = await OnboardingTicket.find_one(OnboardingTicket.token_hash == digest)
    if found is None:
        raise NotFound("unknown onboarding token", ErrorCode.TICKET_NOT_FOUND)
    if found.status != "pending":
        raise Conflict("this onboarding code has already been used", ErrorCode.TICKET_USED)
    if found.expires_at <= now():
        raise Gone("this onboarding code has expired; create a new one", ErrorCode.TICKET_EXPIRED)
    if found.camera_model != body.camera_model:
        raise Invalid("this onboarding code was made for another camera model")
    await _check_not_bound_elsewhere(body.device_uid, found.user_id)

    claimed = await tickets.find_one_and_update(
        {"_id": found.id, "status": "pending", "expires_at": {"$gt": now()}},
        {"$set": {"status": "claimed"}},
        return_document=ReturnDocument.AFTER,
    )
    if claimed is None:  # another camera won the race, or it expired meanwhile
        again = await OnboardingTicket.get(found.id)
        if again is not None and again.status == "pending" and again.expires_at <= now():
            raise Gone(
                "this onboarding code has expired; create a new one", ErrorCode.TICKET_EXPIRED
            )
        raise Conflict("this onboarding code has already been used", ErrorCode.TICKET_USED)
    previous = await Device.find_one(
        Device.device_uid == body.device_uid, Device.owner_id == found.user_id
    )
    rebound: AccessChange | None = None
    try:
        if previous is not None:  # on record before the new key can take its place
            rebound = await record_change(previous, [binding(previous)], "device_removed")
        device = await _bind_device(body, found)
    except CloudError:
        await tickets.update_one(
            {"_id": found.id, "status": "claimed"}, {"$set": {"status": "pending"}}
        )
        raise
    await tickets.update_one(
        {"_id": found.id}, {"$set": {"status": "activated", "device_id": device.id}}
    )
    log.info("device %s activated from ticket %s", device.id, found.id)
    return device, found, rebound


async def _check_not_bound_elsewhere(device_uid: str, owner_id: PydanticObjectId) -> None:
    bound = await Device.find_one(Device.device_uid == device_uid)
    if bound is not None and bound.owner_id != owner_id:
        raise Conflict(
            "this camera belongs to another account; its owner must remove it first",
            ErrorCode.DEVICE_BOUND,
        )


async def _bind_device(body: ActivateRequest, ticket: OnboardingTicket) -> Device:
    """Create the device, or re-bind the owner's existing one (a factory-reset camera)."""
    fields: dict[str, Any] = {
        "name": ticket.device_name,
        "camera_model": body.camera_model,
        "firmware_version": body.firmware_version,
        "public_key": body.public_key,
        "activated_at": now(),
    }
    try:
        doc = await Device.get_pymongo_collection().find_one_and_update(
            {"device_uid": body.device_uid, "owner_id": ticket.user_id},
            {"$set": fields, "$setOnInsert": {"online": False, "last_seen": None}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError:
        raise Conflict(
            "this camera belongs to another account; its owner must remove it first",
            ErrorCode.DEVICE_BOUND,
        ) from None
    if doc is None:  # cannot happen with upsert=True and ReturnDocument.AFTER
        raise RuntimeError("device upsert returned nothing")
    device: Device = Device.model_validate({**doc, "id": doc["_id"]})
    return device


TAG = "onboarding"
ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/v1/onboarding",
        create_ticket,
        "Create a QR code for a new camera",
        TAG,
        status=201,
        body=OnboardingRequest,
        response=OnboardingTicketOut,
        errors=(429,),
        auth=require_user,
    ),
    Endpoint(
        "GET",
        "/api/v1/onboarding/{ticket_id}",
        ticket_status,
        "Status of your onboarding code",
        TAG,
        response=OnboardingStatus,
        errors=(404,),
        auth=require_user,
    ),
    Endpoint(
        "POST",
        "/api/v1/devices/activate",
        activate,
        "Camera: claim an onboarding token and register its key",
        TAG,
        status=201,
        body=ActivateRequest,
        response=ActivateResponse,
        errors=(404, 409, 410, 429),
        public=True,
        description="Authenticated by the one-time token from the QR code.",
    ),
]
