"""Where the cloud may send: webhook URLs and push endpoints are chosen by users, so in
production a URL whose host resolves to a loopback, private, link-local, multicast or
reserved address is refused (server-side request forgery). The check runs when the URL is
registered and again at every send, and the send connects to the very address checked (a
DNS answer that changes between the two cannot redirect it). ``NOTIFY_ALLOW_LOOPBACK``
lets tests on one machine use loopback receivers; development checks nothing (webhooks to
a home server on the LAN are the point there).
"""

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from cloud.settings import Settings

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedAddress(ValueError):
    """The URL may not be sent to; the message says why (it is shown to the user)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    address: str | None  # the checked address to connect to; None: no check (development)


def checking(settings: Settings) -> bool:
    return settings.production


def allowed(address: IpAddress, settings: Settings) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return settings.notify_allow_loopback
    return address.is_global and not address.is_multicast and not address.is_reserved


def split(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a bracketed host that is no IPv6 address, NFKC tricks
        raise RefusedAddress(f"the URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedAddress("the URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise RefusedAddress("the URL must not carry a user name or password")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedAddress("the URL's port is not a number from 0 to 65535") from None
    return parts.scheme, parts.hostname, port


async def resolve(host: str, port: int) -> list[IpAddress]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=5
        )
    except (OSError, TimeoutError) as exc:
        raise RefusedAddress(f"the host {host!r} does not resolve") from exc
    found: list[IpAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    if not found:
        raise RefusedAddress(f"the host {host!r} does not resolve")
    return found


async def check(url: str, settings: Settings) -> Target:
    """The address to send ``url`` to, or RefusedAddress. Every address the name has must be
    allowed (one forbidden answer refuses it: the resolver could pick either)."""
    scheme, host, port = split(url)
    return await check_host(scheme, host, port, settings)


async def check_host(scheme: str, host: str, port: int, settings: Settings) -> Target:
    if not checking(settings):
        return Target(scheme, host, port, None)
    addresses = await resolve(host, port)
    for address in addresses:
        if not allowed(address, settings):
            raise RefusedAddress(
                f"the host {host!r} resolves to {address}, an address this service "
                "does not send to (loopback, private, link-local, multicast or reserved)"
            )
    return Target(scheme, host, port, str(addresses[0]))


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver for push sends: answers only allowed addresses, so the connection
    goes to an address that was checked."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        target = await check_host("https", host, port, self._settings)
        assert target.address is not None
        address = ipaddress.ip_address(target.address)
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


def describe(exc: BaseException) -> str:
    text: Any = str(exc) or type(exc).__name__
    return str(text)[:300]
