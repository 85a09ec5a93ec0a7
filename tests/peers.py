"""WebSocket peers for the signaling suites: a thin JSON client over ``websockets``."""

import asyncio
import json
import time
from typing import Any

import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sim.identity import assertion
from tests.conftest import Account, ActivatedDevice

AUDIENCE = "http://testserver"  # the test app's PUBLIC_URL


class Peer:
    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.seen: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
        self.seen.append(message)
        return message

    async def expect(self, type_: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.05, deadline - time.monotonic()))
            if message["type"] == type_:
                return message

    async def expect_all(self, *types: str, timeout: float = 5.0) -> dict[str, dict[str, Any]]:
        """One message of each type, in whatever order they arrive (others are skipped)."""
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(types):
            message = await self.recv(max(0.05, deadline - time.monotonic()))
            if message["type"] in types and message["type"] not in found:
                found[message["type"]] = message
        return found

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives within ``seconds``."""
        got = []
        try:
            while True:
                got.append(await self.recv(seconds))
        except TimeoutError:
            return got

    async def closed_with(self, timeout: float = 7.0) -> int:
        try:
            while True:
                await asyncio.wait_for(self.socket.recv(), timeout)
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None
            return int(exc.rcvd.code)


async def connect(base: str, path: str, token: str) -> Peer:
    socket = await websockets.connect(base + path, max_size=2**20)
    peer = Peer(socket)
    await peer.send({"type": "hello", "token": token})
    return peer


async def camera(
    base: str,
    device: ActivatedDevice,
    key: Ed25519PrivateKey | None = None,
    audience: str = AUDIENCE,
) -> Peer:
    peer = await connect(
        base, "/ws/v1/device", assertion(key or device.private_key, device.id, audience)
    )
    welcome = await peer.recv()
    assert welcome["type"] == "welcome", welcome
    assert welcome["role"] == "device"
    return peer


async def viewer(base: str, account: Account) -> Peer:
    peer = await connect(base, "/ws/v1/client", account.tokens["access_token"])
    welcome = await peer.recv()
    assert welcome["type"] == "welcome", welcome
    return peer
