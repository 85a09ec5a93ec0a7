"""What the media suites share: sample videos, a connected relay, the GridFS collections."""

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection
from starlette.applications import Starlette

from cloud.media.models import Media
from tests.conftest import RELAY_SECRET, Account, ActivatedDevice
from tests.peers import Peer, connect

RELAY = {"Authorization": f"Bearer relay-media:{RELAY_SECRET}"}
MP4_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
MOV_HEAD = b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  "
WEBM_HEAD = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d42878104")
MKV_HEAD = bytes.fromhex("1a45dfa3a34286810142f7810142f2810442f38108") + b"\x42\x82\x88matroska"


def video(size: int, head: bytes = MP4_HEAD) -> bytes:
    """``size`` bytes that open like a video of that container (the rest is noise)."""
    return head + os.urandom(size - len(head))


def collection(name: str) -> AsyncCollection[dict[str, Any]]:
    return Media.get_pymongo_collection().database[name]


async def stored_file_ids(device_id: str) -> set[ObjectId]:
    """Files in GridFS that belong to ``device_id`` (their metadata says so)."""
    files = collection("media.files").find({"metadata.device_id": device_id}, {"_id": 1})
    return {f["_id"] async for f in files}


async def chunk_count(file_id: Any = None) -> int:
    return await collection("media.chunks").count_documents(
        {} if file_id is None else {"files_id": file_id}
    )


async def file_id_of(media_id: str) -> ObjectId:
    doc = await Media.get_pymongo_collection().find_one({"_id": ObjectId(media_id)})
    assert doc is not None
    assert doc["file_id"] is not None
    file_id: ObjectId = doc["file_id"]
    return file_id


async def upload(
    client: httpx.AsyncClient,
    account: Account,
    device: ActivatedDevice,
    data: bytes,
    **params: str,
) -> httpx.Response:
    return await client.post(
        f"/api/v1/devices/{device.id}/uploads",
        content=data,
        params=params,
        headers={**account.headers, "Content-Type": "application/octet-stream"},
    )


async def put_clip(
    client: httpx.AsyncClient,
    device: ActivatedDevice,
    thread_id: str,
    data: bytes,
    content_type: str = "video/mp4",
    **params: str,
) -> httpx.Response:
    return await client.put(
        f"/api/v1/relays/devices/{device.id}/clips/{thread_id}",
        content=data,
        params=params,
        headers={**RELAY, "Content-Type": content_type},
    )


@pytest.fixture
async def relay(ws_base: str) -> AsyncIterator[Peer]:
    peer = await connect(ws_base, "/ws/v1/relay", f"relay-media:{RELAY_SECRET}")
    assert (await peer.recv())["type"] == "welcome"
    yield peer
    await peer.socket.close()


@contextlib.contextmanager
def media_settings(app: Starlette, **changes: Any) -> Iterator[None]:
    """The running app with some settings changed for the requests of one test."""
    ctx = app.state.context
    before = ctx.settings
    ctx.settings = dataclasses.replace(before, **changes)
    try:
        yield
    finally:
        ctx.settings = before
