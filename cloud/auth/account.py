"""The account itself: change its password, or remove it (docs/protocol.md, "Accounts").

Both ask for the password again, so an access token alone (a borrowed phone, a stolen
token) can do neither; failures count against the account like failed sign-ins. Both end
sign-ins everywhere (cloud.auth.signins): a new password ends every other sign-in, and a
removed account ends all of them, closing their connections.
"""

import logging

from starlette.requests import Request
from starlette.responses import Response

from cloud.auth.models import RefreshToken, User
from cloud.auth.passwords import WeakPassword, check_strength
from cloud.auth.routes import end_signins
from cloud.auth.tokens import UserPrincipal
from cloud.context import context, require_user, user
from cloud.devices.access import record_change, share_grant
from cloud.devices.models import Device, Share
from cloud.devices.routes import remove_device
from cloud.errors import Invalid, Unauthenticated
from cloud.http import Endpoint, parse_body, reply
from cloud.notify.notifier import notifier
from cloud.throttle import key
from protocol.api import AccountRemoval, PasswordChange
from protocol.errors import ErrorCode

log = logging.getLogger(__name__)


async def confirm(request: Request, principal: UserPrincipal, password: str) -> User:
    """The account, once ``password`` is its password (401 otherwise, throttled)."""
    ctx = context(request)
    found = await User.get(principal.user_id)
    if found is None:
        raise Unauthenticated("the account no longer exists", ErrorCode.INVALID_TOKEN)
    account_key = key("login-account", found.email)  # the sign-in's failure count
    await ctx.throttle.check(
        account_key,
        ctx.settings.login_max_failures_per_account,
        "too many wrong passwords for this account; try again later",
    )
    if not await ctx.passwords.verify(found.password_hash, password):
        await ctx.throttle.hit(account_key, ctx.settings.login_window_s)
        raise Unauthenticated("wrong password", ErrorCode.INVALID_CREDENTIALS)
    await ctx.throttle.reset(account_key)
    return found


async def change_password(request: Request) -> Response:
    """A new password; every other sign-in ends (this one goes on)."""
    principal = user(request)
    body = await parse_body(request, PasswordChange)
    found = await confirm(request, principal, body.current_password)
    if body.new_password == body.current_password:
        raise Invalid("the new password is the current one", ErrorCode.WEAK_PASSWORD)
    try:
        check_strength(body.new_password, found.email)
    except WeakPassword as exc:
        raise Invalid(str(exc), ErrorCode.WEAK_PASSWORD) from None
    found.password_hash = await context(request).passwords.hash(body.new_password)
    await found.save()
    await end_signins(request, principal.user_id, keep=principal.sid)
    log.info("user %s changed their password", principal.user_id)
    return reply(None, 204)


async def delete_account(request: Request) -> Response:
    """Remove the account and everything of it: its cameras (told, they stop) with their
    events and media, the shares it gave and was given, its push subscriptions, webhooks
    and preferences, and every sign-in."""
    principal = user(request)
    body = await parse_body(request, AccountRemoval)
    found = await confirm(request, principal, body.password)
    for device in await Device.find(Device.owner_id == principal.user_id).to_list():
        await remove_device(request, device)
    signaling = context(request).signaling
    for share in await Share.find(Share.user_id == principal.user_id).to_list():
        shared = await Device.get(share.device_id)
        if shared is not None:  # as its owner revoking it: the sessions on it end
            change = await record_change(shared, [share_grant(share)], "access_revoked")
            await share.delete()
            await signaling.enforce(change)
        else:
            await share.delete()
    await notifier(request).user_removed(principal.user_id)
    await end_signins(request, principal.user_id)
    await RefreshToken.find(RefreshToken.user_id == principal.user_id).delete()
    await found.delete()
    log.info("user %s removed their account", principal.user_id)
    return reply(None, 204)


TAG = "accounts"
ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/v1/me/password",
        change_password,
        "Change the password (asks for the current one); every other sign-in ends",
        TAG,
        status=204,
        body=PasswordChange,
        errors=(401, 422, 429),
        auth=require_user,
    ),
    Endpoint(
        "DELETE",
        "/api/v1/me",
        delete_account,
        "Remove the account and everything of it (asks for the password)",
        TAG,
        status=204,
        body=AccountRemoval,
        errors=(401, 422, 429),
        auth=require_user,
    ),
]
