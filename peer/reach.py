"""Which of the cloud's STUN and TURN URLs answer from here, so that aiortc gets one that does.

The cloud hands out a STUN URL and TURN URLs over UDP and TCP (and TLS): a network that
blocks UDP can still reach TURN over TCP. aiortc uses only the first STUN and the first TURN
URL it is given (``aiortc.rtcicetransport.connection_kwargs``: "only a single TURN server is
supported"), and aioice waits out its 5 s gathering timeout on a server that never answers
before the answer leaves. So before a peer gathers, :func:`reachable` asks each server once,
in parallel: a STUN Binding request over UDP (a TURN server answers one on its port too) or a
TCP connection (TLS handshake for ``turns:``). It returns the ICE server list to give aiortc:
the STUN URL only if it answered, and first the most preferred TURN URL that answered (UDP,
then TCP, then TLS, in the cloud's order). A URL that does not answer within
:data:`PROBE_TIMEOUT_S` is left out; when no TURN URL answers, the list keeps them all (aiortc
then finds no relay candidate, and :class:`Reachability` says which did not answer).
Answers are remembered for :data:`CACHE_S`, so only the first session after a network
change pays for the probe (one round trip when UDP works, the timeout when it does not).
"""

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aioice import stun
from aiortc.rtcicetransport import parse_stun_turn_uri

from peer.ice import IceServerJson

PROBE_TIMEOUT_S = 0.7
CACHE_S = 60.0
_PREFERENCE = {("turn", "udp"): 0, ("turn", "tcp"): 1, ("turns", "tcp"): 2}

_remembered: dict[tuple[str, str, int, str], tuple[float, bool]] = {}


@dataclass(frozen=True)
class Reachability:
    """What :func:`reachable` found: the servers to use and the URLs that did not answer."""

    servers: list[IceServerJson]
    silent: list[str] = field(default_factory=list)
    turn_answered: str | None = None  # the TURN URL given to aiortc first, if one answered

    def explain(self) -> str:
        """Why no relay candidate may have come, from what was observed (empty if nothing)."""
        if self.turn_answered:
            return f"{self.turn_answered} answered but allocated nothing: credentials refused?"
        if self.silent:
            return f"no answer from {', '.join(self.silent)} within {PROBE_TIMEOUT_S:g} s"
        return ""


class _Stun(asyncio.DatagramProtocol):
    def __init__(self, transaction_id: bytes) -> None:
        self.transaction_id = transaction_id
        self.answered = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(ValueError):
            message = stun.parse_message(data)
            if message.transaction_id == self.transaction_id and not self.answered.done():
                self.answered.set_result(True)


async def _udp_answers(host: str, port: int) -> bool:
    loop = asyncio.get_running_loop()
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Stun(request.transaction_id), remote_addr=(host, port)
    )
    try:
        for _ in range(3):  # a lost datagram is not a blocked network
            transport.sendto(bytes(request))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROBE_TIMEOUT_S / 3):
                    return bool(await asyncio.shield(protocol.answered))
        return False
    finally:
        transport.close()


async def _tcp_answers(host: str, port: int, tls: bool) -> bool:
    context = ssl.create_default_context() if tls else None
    _, writer = await asyncio.open_connection(host, port, ssl=context)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _answers(url: str) -> bool:
    parsed = parse_stun_turn_uri(url)
    transport = parsed.get("transport") or "udp"
    scheme, host, port = parsed["scheme"], parsed["host"], parsed["port"]
    key = (scheme, host, port, transport)
    cached = _remembered.get(key)
    if cached is not None and time.monotonic() - cached[0] < CACHE_S:
        return cached[1]
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            if scheme in ("stun", "turn") and transport == "udp":
                answered = await _udp_answers(host, port)
            else:
                answered = await _tcp_answers(host, port, tls=scheme in ("stuns", "turns"))
    except (OSError, TimeoutError, ssl.SSLError):
        answered = False
    _remembered[key] = (time.monotonic(), answered)
    return answered


async def reachable(ice_servers: Sequence[IceServerJson]) -> Reachability:
    """The ICE servers to give aiortc from here (see the module's docstring)."""
    urls = [
        (index, url)
        for index, server in enumerate(ice_servers)
        for url in ([server["urls"]] if isinstance(server["urls"], str) else server["urls"])
    ]
    if not urls:
        return Reachability(list(ice_servers))
    answered = await asyncio.gather(*(_answers(url) for _, url in urls))
    silent = [url for (_, url), ok in zip(urls, answered, strict=True) if not ok]
    stun_url = next(
        (u for (_, u), ok in zip(urls, answered, strict=True) if ok and u.startswith("stun")),
        None,
    )
    turn = sorted(
        ((i, u) for (i, u), ok in zip(urls, answered, strict=True) if ok and u.startswith("turn")),
        key=lambda entry: _preference(entry[1]),
    )
    servers: list[IceServerJson] = [{"urls": [stun_url]}] if stun_url else []
    if turn:
        index, first = turn[0]
        others = [u for i, u in turn[1:] if i == index]
        servers.append({**ice_servers[index], "urls": [first, *others]})
        return Reachability(servers, silent, first)
    servers += [s for s in ice_servers if not _is_stun_only(s)]  # let aiortc try (and fail)
    return Reachability(servers, silent)


def _preference(url: str) -> int:
    parsed = parse_stun_turn_uri(url)
    return _PREFERENCE.get((parsed["scheme"], parsed.get("transport") or "udp"), 9)


def _is_stun_only(server: IceServerJson) -> bool:
    urls = [server["urls"]] if isinstance(server["urls"], str) else list(server["urls"])
    return all(url.startswith("stun") for url in urls)


def forget() -> None:
    """Forget every remembered answer (the network changed)."""
    _remembered.clear()
