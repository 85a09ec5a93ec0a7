from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
from beanie import PydanticObjectId
from bson import ObjectId
from starlette.applications import Starlette

from cloud.auth.models import User
from cloud.media.models import Media
from cloud.media.retention import Retention
from tests.cloud.media.conftest import (
    RELAY,
    chunk_count,
    collection,
    file_id_of,
    put_clip,
    stored_file_ids,
    upload,
    video,
)
from tests.conftest import ActivateDevice, MakeAccount
from tests.peers import Peer


async def expire(media_id: str) -> None:
    await Media.get_pymongo_collection().update_one(
        {"_id": ObjectId(media_id)},
        {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}},
    )


async def test_expired_media_vanish_from_every_read_and_the_sweep_deletes_files_and_chunks(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    old = (await upload(client, owner, device, video(600_000))).json()
    new = (await upload(client, owner, device, video(1000))).json()
    old_file, new_file = await file_id_of(old["id"]), await file_id_of(new["id"])
    content_url = (await client.get(f"/api/v1/media/{old['id']}", headers=owner.headers)).json()[
        "content_url"
    ]
    await expire(old["id"])
    # Gone from every read at once, before any sweep.
    for url in (f"/api/v1/media/{old['id']}", f"/api/v1/uploads/{old['id']}", content_url):
        assert (await client.get(url, headers=owner.headers)).status_code == 404, url
    listed = await client.get(f"/api/v1/devices/{device.id}/media", headers=owner.headers)
    assert [m["id"] for m in listed.json()["media"]] == [new["id"]]
    usage = await client.get("/api/v1/media/usage", headers=owner.headers)
    assert usage.json()["used_bytes"] == 1000
    assert await chunk_count(old_file) == 3  # still stored: only the sweep deletes

    retention: Retention = app.state.media_retention
    await retention.sweep()
    assert await chunk_count(old_file) == 0
    assert await collection("media.files").count_documents({"_id": old_file}) == 0
    assert await Media.get(PydanticObjectId(old["id"])) is None
    assert await stored_file_ids(device.id) == {new_file}
    assert await chunk_count(new_file) == 1


async def test_an_owner_over_quota_loses_finished_clips_oldest_first_until_under(
    app: Starlette,
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, other = await make_account("owner"), await make_account("other")
    device, others = await activate_device(owner), await activate_device(other)
    event = await client.post(
        "/api/v1/relays/events",
        headers=RELAY,
        json={
            "device_id": device.id,
            "thread_id": "q-0",
            "kind": "motion",
            "state": "new",
            "score": 0.5,
            "started_at": datetime.now(UTC).isoformat(),
        },
    )
    assert event.status_code == 200, event.text
    clips = []
    for n in range(3):
        r = await put_clip(client, device, f"q-{n}", video(300_000), final="true")
        clips.append(r.json()["id"])
    shown = await client.get(f"/api/v1/events/{event.json()['id']}", headers=owner.headers)
    assert shown.json()["clip_id"] == clips[0]
    running = (await put_clip(client, device, "q-running", video(300_000))).json()["id"]
    uploaded = (await upload(client, owner, device, video(300_000))).json()["id"]
    untouched = (await put_clip(client, others, "q-other", video(300_000), final="true")).json()
    files = {i: await file_id_of(i) for i in [*clips, running, uploaded]}
    await User.get_pymongo_collection().update_one(
        {"_id": PydanticObjectId(owner.id)}, {"$set": {"media_quota_bytes": 1_000_000}}
    )

    retention: Retention = app.state.media_retention
    await retention.sweep()
    # 1.5 MB against 1 MB: the two oldest finished clips go; the clip still recording and
    # the upload stay, and so does another owner's clip.
    for gone in clips[:2]:
        assert await Media.get(PydanticObjectId(gone)) is None
        assert await chunk_count(files[gone]) == 0
    for kept in (clips[2], running, uploaded, untouched["id"]):
        assert await Media.get(PydanticObjectId(kept)) is not None
    assert await stored_file_ids(device.id) == {files[clips[2]], files[running], files[uploaded]}
    usage = (await client.get("/api/v1/media/usage", headers=owner.headers)).json()
    assert usage["used_bytes"] == 900_000
    shown = await client.get(f"/api/v1/events/{event.json()['id']}", headers=owner.headers)
    assert shown.json()["clip_id"] is None


async def test_the_sweeper_runs_on_its_own_and_stops_with_its_owner(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    import asyncio
    import dataclasses

    owner = await make_account("owner")
    device = await activate_device(owner)
    item = (await upload(client, owner, device, video(1000))).json()
    file_id = await file_id_of(item["id"])
    await expire(item["id"])
    settings = dataclasses.replace(app.state.context.settings, media_sweep_interval_s=1)
    sweeper = Retention(app.state.media_store, settings)
    sweeper.start()
    try:
        async with asyncio.timeout(10):
            while await chunk_count(file_id):
                await asyncio.sleep(0.1)
    finally:
        await sweeper.stop()
    assert await Media.get(PydanticObjectId(item["id"])) is None


async def test_files_no_item_points_at_and_unfinished_files_are_collected(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    item = (await upload(client, owner, device, video(1000))).json()
    kept = await file_id_of(item["id"])
    # What processes that died two days ago left: a file stored whose item was never
    # written, and the chunks of a put cut off mid-way (no files document).
    stored, cut_off = (
        ObjectId.from_datetime(datetime.now(UTC) - timedelta(days=days)) for days in (2, 3)
    )
    await collection("media.files").insert_one(
        {"_id": stored, "length": 1, "chunkSize": 255 * 1024, "filename": "x", "metadata": {}}
    )
    for files_id in (stored, cut_off):
        await collection("media.chunks").insert_one({"files_id": files_id, "n": 0, "data": b"x"})

    async def body() -> AsyncIterator[bytes]:
        yield video(300_000)

    recent = await app.state.media_store.put(body(), filename="in-flight")  # an item to be

    retention: Retention = app.state.media_retention
    assert await retention.collect_orphans() >= 2
    assert await collection("media.files").count_documents({"_id": stored}) == 0
    assert await chunk_count(stored) == 0
    assert await chunk_count(cut_off) == 0
    assert await chunk_count(recent.file_id) == 2  # younger than a day: left alone
    assert await chunk_count(kept) == 1
    content = await client.get(f"/api/v1/media/{item['id']}/content", headers=owner.headers)
    assert content.status_code == 200
    await app.state.media_store.delete(recent.file_id)


async def test_a_recording_its_relay_stopped_uploading_fails_and_stays_playable(
    app: Starlette,
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    data = video(1000)
    stale = (await put_clip(client, device, "stale", data)).json()
    fresh = (await put_clip(client, device, "fresh", video(1000))).json()
    await Media.get_pymongo_collection().update_one(
        {"_id": ObjectId(stale["id"])},
        {"$set": {"updated_at": datetime.now(UTC) - timedelta(hours=2)}},
    )
    retention: Retention = app.state.media_retention
    await retention.sweep()
    shown = (await client.get(f"/api/v1/media/{stale['id']}", headers=owner.headers)).json()
    assert shown["state"] == "failed"
    assert "never finished" in shown["error"]
    assert (await client.get(shown["content_url"])).content == data
    still = (await client.get(f"/api/v1/media/{fresh['id']}", headers=owner.headers)).json()
    assert (still["state"], still["error"]) == ("recording", None)
