"""What request handlers share within one process, built once by ``create_app``."""

from dataclasses import dataclass

from starlette.requests import Request

from cloud.auth.passwords import Passwords
from cloud.auth.tokens import AccessTokens, RefreshTokens, UserPrincipal
from cloud.db import Database
from cloud.errors import Unauthenticated
from cloud.settings import Settings
from cloud.signaling.ws import Signaling
from cloud.throttle import Throttle


@dataclass
class Context:
    settings: Settings
    database: Database
    passwords: Passwords
    access_tokens: AccessTokens
    refresh_tokens: RefreshTokens
    throttle: Throttle
    signaling: Signaling


def context(request: Request) -> Context:
    ctx: Context = request.app.state.context
    return ctx


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send 'Authorization: Bearer <access token>'")
    return token.strip()


async def require_user(request: Request) -> UserPrincipal:
    """The authenticator of user routes: a valid access token in the Authorization header,
    of a sign-in that has not ended (cloud.auth.signins)."""
    ctx = context(request)
    return await ctx.signaling.signins.check(ctx.access_tokens.verify(bearer_token(request)))


def user(request: Request) -> UserPrincipal:
    principal: UserPrincipal = request.state.principal
    return principal


def client_address(request: Request) -> str:
    # uvicorn rewrites request.client from X-Forwarded-For only for TRUSTED_PROXIES.
    return request.client.host if request.client else "unknown"
