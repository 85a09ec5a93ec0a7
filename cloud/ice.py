"""STUN/TURN servers for peers, with coturn REST credentials (``use-auth-secret``).

coturn checks ``username = "<unix expiry>:<principal>"`` and
``credential = base64(HMAC-SHA1(static-auth-secret, username))`` (coturn's TURN REST API,
draft-uberti-behave-turn-rest). With no URLs configured the list is empty: peers then use
host candidates only, and never a public server someone else runs.
"""

import base64
import hashlib
import hmac
import time

from cloud.settings import Settings
from protocol.messages import IceServer


def turn_credential(secret: str, principal: str, ttl_s: int, now: float) -> tuple[str, str]:
    username = f"{int(now) + ttl_s}:{principal}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(settings: Settings, principal: str, now: float | None = None) -> list[IceServer]:
    servers: list[IceServer] = []
    if settings.stun_urls:
        servers.append(IceServer(urls=list(settings.stun_urls)))
    if settings.turn_urls and settings.turn_secret:
        username, credential = turn_credential(
            settings.turn_secret,
            principal,
            settings.turn_ttl_s,
            time.time() if now is None else now,
        )
        servers.append(
            IceServer(urls=list(settings.turn_urls), username=username, credential=credential)
        )
    return servers
