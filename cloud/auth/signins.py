"""Sign-ins: one login and every token rotated from it (a refresh token family; the access
token's ``sid`` claim names it).

Ending sign-ins (a logout, a password change, the account's removal) must end everything
they opened, at once and on every instance, although access tokens are stateless JWTs:

- the families' refresh tokens are revoked, so nothing renews them;
- an :class:`~cloud.devices.models.AccessChange` with the grants ``signin:<sid>`` is
  recorded and enforced like any revocation (cloud.signaling.ws): every instance closes
  the connections opened with those sign-ins (the hub keeps each user connection's grant)
  and remembers the grants for a while;
- :meth:`SignIns.check`, which every access token's use goes through, refuses them: it
  asks that memory first (instant on every instance the change reached), then the database
  (an instance that started after the change), whose answer it keeps ``CHECK_TTL_S`` a
  sign-in, which is therefore how long an instance that missed the change may take.
"""

import time
from collections.abc import Callable
from datetime import UTC, datetime

from beanie import PydanticObjectId

from cloud.auth.models import RefreshToken
from cloud.auth.tokens import UserPrincipal, signin_grant
from cloud.devices.models import AccessChange
from cloud.errors import Unauthenticated
from protocol.errors import ErrorCode

CHECK_TTL_S = 5.0
MAX_KNOWN = 50_000  # sign-ins whose answer is kept; beyond, the memory starts afresh


class SignIns:
    """Whether an access token's sign-in still stands; see the module docstring.

    ``revoked(grant)`` is the hub's memory of recent revocations.
    """

    def __init__(self, revoked: Callable[[str], bool], ttl_s: float = CHECK_TTL_S) -> None:
        self._revoked = revoked
        self._ttl_s = ttl_s
        self._known: dict[str, tuple[bool, float]] = {}  # sid -> (stands, read at)

    async def check(self, principal: UserPrincipal) -> UserPrincipal:
        """``principal`` if its sign-in stands, else 401."""
        if not await self.stands(principal.sid):
            raise Unauthenticated(
                "this sign-in has ended (signed out, or the password was changed)",
                ErrorCode.INVALID_TOKEN,
            )
        return principal

    async def stands(self, sid: str) -> bool:
        if self._revoked(signin_grant(sid)):
            self._known[sid] = (False, time.monotonic())
            return False
        known = self._known.get(sid)
        if known is not None and (not known[0] or time.monotonic() - known[1] < self._ttl_s):
            return known[0]  # an ended sign-in never stands again
        live = await RefreshToken.find_one({"family_id": sid, "revoked": False})
        if len(self._known) >= MAX_KNOWN:
            self._known.clear()
        self._known[sid] = (live is not None, time.monotonic())
        return live is not None

    async def end(
        self, user_id: PydanticObjectId, *, only: str | None = None, keep: str | None = None
    ) -> AccessChange | None:
        """End the user's sign-ins (just ``only``, or all but ``keep``) and put the change on
        record; the caller enforces it (``Signaling.enforce``). None when none stood."""
        if only is not None:
            families = [only]
        else:
            families = await RefreshToken.get_pymongo_collection().distinct(
                "family_id", {"user_id": user_id, "revoked": False}
            )
            families = [f for f in families if f != keep]
        if not families:
            return None
        change = AccessChange(
            grants=[signin_grant(f) for f in families],
            reason="signed_out",
            at=datetime.now(UTC),
        )
        await change.insert()  # on record before the tokens go: no instance can miss it
        await RefreshToken.get_pymongo_collection().update_many(
            {"family_id": {"$in": families}}, {"$set": {"revoked": True}}
        )
        for family in families:
            self._known[family] = (False, time.monotonic())
        return change
