"""Account routes: register, login, refresh, logout, me (docs/protocol.md, auth rows)."""

import logging
import unicodedata

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError
from starlette.requests import Request
from starlette.responses import Response

from cloud import metrics
from cloud.auth.models import User
from cloud.auth.passwords import WeakPassword, check_strength
from cloud.auth.tokens import now
from cloud.context import client_address, context, require_user, user
from cloud.errors import Conflict, Invalid, Unauthenticated
from cloud.http import Endpoint, parse_body, reply
from cloud.throttle import key
from protocol.api import Credentials, NewAccount, RefreshRequest, TokenPair, UserOut
from protocol.errors import ErrorCode

log = logging.getLogger(__name__)


def normalise_email(email: str) -> str:
    return unicodedata.normalize("NFC", email).strip().lower()


def user_out(found: User) -> UserOut:
    return UserOut(id=str(found.id), email=found.email, created_at=found.created_at)


async def register(request: Request) -> Response:
    ctx = context(request)
    body = await parse_body(request, NewAccount)
    email = normalise_email(body.email)
    try:
        check_strength(body.password, email)
    except WeakPassword as exc:
        raise Invalid(str(exc), ErrorCode.WEAK_PASSWORD) from None
    created = User(
        email=email, password_hash=await ctx.passwords.hash(body.password), created_at=now()
    )
    try:
        await created.insert()
    except DuplicateKeyError:
        raise Conflict("an account with this email already exists", ErrorCode.EMAIL_TAKEN) from None
    log.info("user %s registered", created.id)
    return reply(user_out(created), 201)


async def login(request: Request) -> Response:
    ctx = context(request)
    settings = ctx.settings
    body = await parse_body(request, Credentials)
    email = normalise_email(body.email)
    account_key = key("login-account", email)
    await ctx.throttle.limit(
        key("login-address", client_address(request)),
        settings.login_max_attempts_per_address,
        settings.login_window_s,
        "too many sign-in attempts from this address; try again later",
    )
    await ctx.throttle.check(
        account_key,
        settings.login_max_failures_per_account,
        "too many failed sign-ins for this account; try again later",
    )
    found = await User.find_one(User.email == email)
    if not await ctx.passwords.verify(found.password_hash if found else None, body.password):
        await ctx.throttle.hit(account_key, settings.login_window_s)
        metrics.SIGN_IN_FAILURES.inc()
        raise Unauthenticated("wrong email or password", ErrorCode.INVALID_CREDENTIALS)
    assert found is not None
    assert found.id is not None
    await ctx.throttle.reset(account_key)
    if ctx.passwords.needs_rehash(found.password_hash):
        found.password_hash = await ctx.passwords.hash(body.password)
        await found.save()
    log.info("user %s signed in", found.id)
    refresh_token, sid = await ctx.refresh_tokens.issue(found.id)
    return reply(token_pair(request, found.id, found.email, refresh_token, sid))


def token_pair(
    request: Request, user_id: PydanticObjectId, email: str, refresh: str, sid: str
) -> TokenPair:
    tokens = context(request).access_tokens
    return TokenPair(
        access_token=tokens.issue(user_id, email, sid),
        refresh_token=refresh,
        expires_in=tokens.ttl_s,
    )


async def refresh(request: Request) -> Response:
    ctx = context(request)
    body = await parse_body(request, RefreshRequest)
    user_id, successor, sid = await ctx.refresh_tokens.rotate(body.refresh_token)
    found = await User.get(user_id)
    if found is None:
        raise Unauthenticated("the account no longer exists", ErrorCode.INVALID_TOKEN)
    return reply(token_pair(request, user_id, found.email, successor, sid))


async def logout(request: Request) -> Response:
    """End the sign-in of the refresh token: its tokens and the connections opened with them
    (not just the refresh token: an access token must not outlive its sign-in)."""
    ctx = context(request)
    body = await parse_body(request, RefreshRequest)
    principal = user(request)
    sid = await ctx.refresh_tokens.family_of(body.refresh_token, principal.user_id)
    await end_signins(request, principal.user_id, only=sid)
    return reply(None, 204)


async def end_signins(
    request: Request, user_id: PydanticObjectId, *, only: str | None = None, keep: str | None = None
) -> None:
    """End sign-ins of the user (see :meth:`cloud.auth.signins.SignIns.end`) everywhere."""
    signaling = context(request).signaling
    change = await signaling.signins.end(user_id, only=only, keep=keep)
    if change is not None:
        await signaling.enforce(change)
        log.info("user %s: %d sign-in(s) ended", user_id, len(change.grants))


async def me(request: Request) -> Response:
    found = await User.get(user(request).user_id)
    if found is None:
        raise Unauthenticated("the account no longer exists", ErrorCode.INVALID_TOKEN)
    return reply(user_out(found))


TAG = "accounts"
ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/v1/auth/register",
        register,
        "Create an account",
        TAG,
        status=201,
        body=NewAccount,
        response=UserOut,
        errors=(409,),
        public=True,
    ),
    Endpoint(
        "POST",
        "/api/v1/auth/login",
        login,
        "Sign in: get an access and a refresh token",
        TAG,
        body=Credentials,
        response=TokenPair,
        errors=(401, 429),
        public=True,
    ),
    Endpoint(
        "POST",
        "/api/v1/auth/refresh",
        refresh,
        "Rotate a refresh token",
        TAG,
        body=RefreshRequest,
        response=TokenPair,
        errors=(401,),
        public=True,
    ),
    Endpoint(
        "POST",
        "/api/v1/auth/logout",
        logout,
        "Revoke a refresh token and its family",
        TAG,
        status=204,
        body=RefreshRequest,
        errors=(404,),
        auth=require_user,
    ),
    Endpoint(
        "GET", "/api/v1/me", me, "The signed-in user", TAG, response=UserOut, auth=require_user
    ),
]
