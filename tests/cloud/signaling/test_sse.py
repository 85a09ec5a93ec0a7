"""The server-sent event stream (``GET /api/v1/stream``) over real HTTP on loopback: what the
client WebSocket pushes (presence, events), an id per message, and ``Last-Event-ID`` resume
replaying the events a client missed while away."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from beanie import PydanticObjectId

from cloud.auth.tokens import AccessTokens
from cloud.settings import Settings
from cloud.signaling.sse import CURSOR
from tests.cloud.events.test_routes import RELAY, report
from tests.conftest import RELAY_SECRET, ActivateDevice, MakeAccount, share
from tests.peers import Peer, camera, connect


class Events:
    """A stream's messages as {event, id, data (parsed)}; comments (pings) are skipped.

    One task reads the lines (a timeout must not cancel the response's line iterator)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        message: dict[str, Any] = {}
        try:
            async for line in self.response.aiter_lines():
                if not line:
                    if "data" in message:
                        message["data"] = json.loads(message["data"])
                        self.messages.put_nowait(message)
                    message = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(":")
                    message[field] = value.removeprefix(" ")
        except httpx.HTTPError:
            pass
        finally:
            self.messages.put_nowait(None)

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            message = await self.messages.get()
        if message is None:
            self.messages.put_nowait(None)
            raise EOFError("the stream ended")
        return message

    async def expect(self, event: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next message named ``event``, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next(max(0.05, deadline - time.monotonic()))
            if message["event"] == event:
                return message

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        try:
            while True:
                got.append(await self.next(seconds))
        except TimeoutError:
            return got


@asynccontextmanager
async def stream(
    base: str, token: str | None, *, last_event_id: str | None = None, query: bool = False
) -> AsyncIterator[Events]:
    headers = {"Accept": "text/event-stream"}
    params = {}
    if token and query:
        params["access_token"] = token
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    async with (
        httpx.AsyncClient(base_url=base, timeout=10) as http,
        http.stream("GET", "/api/v1/stream", headers=headers, params=params) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = Events(response)
        try:
            yield events
        finally:
            events.reader.cancel()


@pytest.fixture
def base(ws_base: str) -> str:
    return ws_base.replace("ws://", "http://")


@pytest.fixture
async def relay(ws_base: str) -> Peer:
    peer = await connect(ws_base, "/ws/v1/relay", f"relay-ev:{RELAY_SECRET}")
    assert (await peer.recv())["type"] == "welcome"
    return peer


async def post_event(client: httpx.AsyncClient, device: str, thread: str, state: str) -> str:
    extra: dict[str, Any] = {}
    if state == "end":
        extra["ended_at"] = datetime.now(UTC).isoformat()
    r = await client.post(
        "/api/v1/relays/events", json=report(device, thread, state, **extra), headers=RELAY
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def test_presence_and_events_arrive_with_ids_and_a_resume_replays_what_was_missed(
    base: str,
    ws_base: str,
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, stranger = await make_account("owner"), await make_account("stranger")
    device = await activate_device(owner)
    async with (
        stream(base, owner.tokens["access_token"]) as mine,
        stream(base, stranger.tokens["access_token"]) as theirs,
    ):
        welcome = await mine.next()
        assert welcome["event"] == "welcome"
        assert welcome["data"]["role"] == "user"
        assert welcome["data"]["principal_id"] == owner.id
        assert welcome["retry"] == "2000"
        assert CURSOR.match(welcome["id"])
        assert (await theirs.next())["event"] == "welcome"

        cam = await camera(ws_base, device)  # the camera comes online
        presence = await mine.expect("device.presence")
        assert presence["data"]["device_id"] == device.id
        assert presence["data"]["online"] is True
        assert presence["data"]["type"] == "device.presence"

        first = await post_event(client, device.id, "t-1", "new")
        pushed = await mine.expect("event")
        assert pushed["data"]["id"] == first
        assert (pushed["data"]["thread_id"], pushed["data"]["state"]) == ("t-1", "new")
        at, _, thread = pushed["id"].partition("-")
        assert thread == first  # <updated_at ms>-<thread id>
        stored = await client.get(f"/api/v1/events/{first}", headers=owner.headers)
        assert stored.status_code == 200
        assert abs(int(at) / 1000 - time.time()) < 5
        seen = pushed["id"]
        await cam.socket.close()
        offline = await mine.expect("device.presence")
        assert offline["data"]["online"] is False
        assert offline["id"] == seen  # no event since: the same resume point
        assert await theirs.quiet(0.3) == []  # a stranger hears nothing of it

    # away: the thread goes on, another starts
    await asyncio.sleep(RESUME_GAP_S)
    await post_event(client, device.id, "t-1", "end")
    second = await post_event(client, device.id, "t-2", "new")

    async with stream(base, owner.tokens["access_token"], last_event_id=seen) as back:
        assert (await back.next())["event"] == "welcome"
        replayed = [await back.expect("event") for _ in range(2)]
        assert [(e["data"]["thread_id"], e["data"]["state"]) for e in replayed] == [
            ("t-1", "end"),
            ("t-2", "new"),
        ]
        assert replayed[1]["data"]["id"] == second
        assert replayed[1]["id"].endswith(second)
        assert _order(replayed[0]) <= _order(replayed[1])  # in (updated_at, id) order
        assert await back.quiet(0.3) == []  # nothing else: each missed thread once
        last = replayed[-1]["id"]

        # live again on the resumed stream
        await post_event(client, device.id, "t-2", "end")
        live = await back.expect("event")
        assert (live["data"]["thread_id"], live["data"]["state"]) == ("t-2", "end")
        assert _order(live) >= _order(replayed[-1])

    # resuming from the replay's last id: the thread's end that came after it, and what
    # changed within the slack before it again (at least once)
    async with stream(base, owner.tokens["access_token"], last_event_id=last) as again:
        assert (await again.next())["event"] == "welcome"
        missed = [(e["data"]["thread_id"], e["data"]["state"]) for e in await again.quiet(0.5)]
        assert ("t-2", "end") in missed
        assert set(missed) <= {("t-1", "end"), ("t-2", "end")}

    # a stranger resuming from the same id gets none of it
    async with stream(base, stranger.tokens["access_token"], last_event_id=seen) as nosy:
        assert (await nosy.next())["event"] == "welcome"
        assert await nosy.quiet(0.5) == []


RESUME_GAP_S = 2.5  # more than the resume slack: the replay holds only what came after


def _order(message: dict[str, Any]) -> tuple[int, str]:
    at, _, thread = str(message["id"]).partition("-")
    return int(at), thread


async def test_a_shared_user_gets_the_cameras_events_and_loses_them_with_the_share(
    base: str,
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, friend = await make_account("owner"), await make_account("friend")
    device = await activate_device(owner)
    assert (await share(client, owner, device, friend)).status_code == 201
    async with stream(base, friend.tokens["access_token"], query=True) as events:
        assert (await events.next())["event"] == "welcome"
        await post_event(client, device.id, "s-1", "new")
        assert (await events.expect("event"))["data"]["thread_id"] == "s-1"
        removed = await client.delete(
            f"/api/v1/devices/{device.id}/shares/{friend.id}", headers=owner.headers
        )
        assert removed.status_code == 204
        await post_event(client, device.id, "s-2", "new")
        assert [m for m in await events.quiet(0.5) if m["event"] == "event"] == []


async def test_the_stream_ends_when_its_token_expires(
    base: str, settings: Settings, make_account: MakeAccount
) -> None:
    who = await make_account("brief")
    tokens = AccessTokens(settings.resolved_jwt_secret(), settings.public_url, 2)
    token = tokens.issue(PydanticObjectId(who.id), who.email, who.sid)
    started = time.monotonic()
    async with stream(base, token) as events:
        assert (await events.next())["event"] == "welcome"
        bye = await events.expect("go_away", timeout=6)
        assert bye["data"]["reason"] == "token_expired"
        with pytest.raises(EOFError):
            await events.next(3)
    assert time.monotonic() - started < 5


async def test_a_stream_needs_a_valid_token_and_an_id_of_its_own(
    base: str, make_account: MakeAccount
) -> None:
    who = await make_account("careful")
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/api/v1/stream")).status_code == 401
        bad = await http.get("/api/v1/stream", params={"access_token": "nope"})
        assert bad.status_code == 401
        assert bad.json()["error"]["code"] == "invalid_token"
        odd = await http.get(
            "/api/v1/stream", headers={**who.headers, "Last-Event-ID": "yesterday"}
        )
        assert odd.status_code == 400
        assert odd.json()["error"]["code"] == "malformed_request"
        unknown = await http.get("/api/v1/stream", params={"token": "x"}, headers=who.headers)
        assert unknown.status_code == 422
