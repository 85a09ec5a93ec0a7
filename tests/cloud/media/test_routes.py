from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
from beanie import PydanticObjectId
from starlette.applications import Starlette

from cloud.auth.models import User
from cloud.media.models import Media
from cloud.media.tokens import ContentTokens
from cloud.settings import Settings
from tests.cloud.media.conftest import (
    MKV_HEAD,
    MOV_HEAD,
    RELAY,
    WEBM_HEAD,
    chunk_count,
    file_id_of,
    media_settings,
    put_clip,
    stored_file_ids,
    upload,
    video,
)
from tests.conftest import ActivateDevice, MakeAccount, share
from tests.peers import Peer, viewer

CHUNK = 255 * 1024
MISSING = "6b0000000000000000000000"


async def test_owner_and_sharee_read_media_a_stranger_gets_404_on_every_media_url(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner, friend, stranger = (
        await make_account("owner"),
        await make_account("friend"),
        await make_account("stranger"),
    )
    device = await activate_device(owner)
    assert (await share(client, owner, device, friend)).status_code == 201
    data = video(300_000)
    created = await upload(client, owner, device, data, filename="garden.mp4")
    assert created.status_code == 201, created.text
    item = created.json()
    assert {k: item[k] for k in ("kind", "state", "analysis", "content_type", "size")} == {
        "kind": "upload",
        "state": "ready",
        "analysis": "pending",
        "content_type": "video/mp4",
        "size": len(data),
    }
    assert (item["filename"], item["device_id"]) == ("garden.mp4", device.id)
    media_url = f"/api/v1/media/{item['id']}"
    urls = [
        f"/api/v1/devices/{device.id}/media",
        media_url,
        media_url + "/content",
        f"/api/v1/uploads/{item['id']}",
    ]
    for account in (owner, friend):
        listed = await client.get(urls[0], headers=account.headers)
        assert [m["id"] for m in listed.json()["media"]] == [item["id"]]
        for url in urls[1:]:
            assert (await client.get(url, headers=account.headers)).status_code == 200, url
        content = await client.get(media_url + "/content", headers=account.headers)
        assert content.content == data
        assert content.headers["content-type"] == "video/mp4"
        assert content.headers["accept-ranges"] == "bytes"
        assert content.headers["cache-control"] == "private, no-store"
    for url in urls:
        r = await client.get(url, headers=stranger.headers)
        assert r.status_code == 404, url
    assert (await client.get(urls[0], headers=stranger.headers)).json()["error"][
        "code"
    ] == "device_not_found"
    stranger_delete = await client.delete(media_url, headers=stranger.headers)
    assert stranger_delete.status_code == 404
    stranger_upload = await upload(client, stranger, device, data)
    assert (stranger_upload.status_code, stranger_upload.json()["error"]["code"]) == (
        404,
        "device_not_found",
    )
    assert (await client.delete(media_url, headers=friend.headers)).status_code == 403
    assert (await upload(client, friend, device, data)).status_code == 403
    usage = (await client.get("/api/v1/media/usage", headers=owner.headers)).json()
    assert (usage["used_bytes"], usage["by_kind"]) == (len(data), {"upload": len(data)})
    assert (await client.get("/api/v1/media/usage", headers=stranger.headers)).json()[
        "used_bytes"
    ] == 0

    file_id = await file_id_of(item["id"])
    assert await chunk_count(file_id) == 2
    assert (await client.delete(media_url, headers=owner.headers)).status_code == 204
    assert (await client.get(media_url, headers=owner.headers)).status_code == 404
    assert await stored_file_ids(device.id) == set()
    assert await chunk_count(file_id) == 0
    assert (await client.delete(media_url, headers=owner.headers)).status_code == 404
    for url in (f"/api/v1/media/{MISSING}", "/api/v1/media/nonsense", f"/api/v1/uploads/{MISSING}"):
        assert (await client.get(url, headers=owner.headers)).status_code == 404


async def test_range_requests_return_exactly_the_bytes_asked_for(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    data = video(600_000)
    item = (await upload(client, owner, device, data)).json()
    url = f"/api/v1/media/{item['id']}/content"

    async def get(range_: str | None, **headers: str) -> httpx.Response:
        extra = {"Range": range_} if range_ is not None else {}
        return await client.get(url, headers={**owner.headers, **extra, **headers})

    whole = await get(None)
    assert (whole.status_code, whole.headers["accept-ranges"]) == (200, "bytes")
    assert whole.content == data
    assert whole.headers["content-length"] == str(len(data))
    cases = [
        ("bytes=0-99", 0, 100),  # first
        (f"bytes={CHUNK - 1000}-{CHUNK + 999}", CHUNK - 1000, CHUNK + 1000),  # across chunks
        ("bytes=300000-300009", 300_000, 300_010),  # middle
        ("bytes=-500", len(data) - 500, len(data)),  # suffix
        ("bytes=599000-", 599_000, len(data)),  # open-ended
        ("bytes=599990-700000", 599_990, len(data)),  # past the end: clamped
    ]
    for header, start, end in cases:
        r = await get(header)
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{len(data)}", header
        assert r.content == data[start:end], header
        assert r.headers["content-length"] == str(end - start)
        assert r.headers["content-type"] == "video/mp4"
    for header in ("bytes=600000-", "bytes=-0"):
        r = await get(header)
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{len(data)}"
        assert r.json()["error"]["code"] == "range_not_satisfiable"
    for ignored in ("bytes=0-1,5-9", "bytes=9-2", "lines=1-2"):
        r = await get(ignored)
        assert (r.status_code, r.content) == (200, data), ignored
    etag = whole.headers["etag"]
    assert (await get("bytes=0-9", **{"If-Range": etag})).status_code == 206
    stale = await get("bytes=0-9", **{"If-Range": '"another-version"'})
    assert (stale.status_code, len(stale.content)) == (200, len(data))
    head = await client.head(url, headers={**owner.headers, "Range": "bytes=10-19"})
    assert (head.status_code, head.headers["content-length"], head.content) == (206, "10", b"")


async def test_signed_content_urls_work_without_a_header_for_their_user_and_item_only(
    app: Starlette,
    settings: Settings,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, friend, stranger = (
        await make_account("owner"),
        await make_account("friend"),
        await make_account("stranger"),
    )
    device = await activate_device(owner)
    assert (await share(client, owner, device, friend)).status_code == 201
    first, second = video(5_000), video(7_000)
    a = (await upload(client, owner, device, first)).json()
    b = (await upload(client, owner, device, second)).json()
    mine = (await client.get(f"/api/v1/media/{a['id']}", headers=friend.headers)).json()
    url = mine["content_url"]
    assert url.startswith(f"/api/v1/media/{a['id']}/content?token=")
    played = await client.get(url)  # no Authorization header
    assert (played.status_code, played.content) == (200, first)
    ranged = await client.get(url, headers={"Range": "bytes=0-9"})
    assert (ranged.status_code, ranged.content) == (206, first[:10])
    token = url.split("token=")[1]
    other_item = await client.get(f"/api/v1/media/{b['id']}/content", params={"token": token})
    assert other_item.status_code == 404

    key = settings.resolved_media_url_secret()
    assert key == app.state.content_tokens._key
    fresh = ContentTokens(key, 300).issue(PydanticObjectId(a["id"]), PydanticObjectId(owner.id))
    expired = ContentTokens(key, -60).issue(PydanticObjectId(a["id"]), PydanticObjectId(owner.id))
    content = f"/api/v1/media/{a['id']}/content"
    assert (await client.get(content, params={"token": fresh})).status_code == 200
    r = await client.get(content, params={"token": expired})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    strangers = ContentTokens(key, 300).issue(
        PydanticObjectId(a["id"]), PydanticObjectId(stranger.id)
    )
    assert (await client.get(content, params={"token": strangers})).status_code == 404
    user_id, expires, signature = token.split(".")
    for forged in (f"{owner.id}.{expires}.{signature}", f"{user_id}.{expires}.x", "garbage"):
        assert (await client.get(content, params={"token": forged})).status_code == 404
    assert (await client.get(content)).status_code == 401
    # The stranger's own listing gives nothing to sign.
    assert (
        await client.get(f"/api/v1/media/{a['id']}", headers=stranger.headers)
    ).status_code == 404

    revoked = await client.delete(
        f"/api/v1/devices/{device.id}/shares/{friend.id}", headers=owner.headers
    )
    assert revoked.status_code == 204
    assert (await client.get(url)).status_code == 404
    assert (await client.get(url, headers={"Range": "bytes=10-19"})).status_code == 404


async def test_a_clip_plays_while_its_event_runs_each_upload_replacing_the_last(
    relay: Peer,
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    started = datetime.now(UTC) - timedelta(seconds=20)
    event = await client.post(
        "/api/v1/relays/events",
        headers=RELAY,
        json={
            "device_id": device.id,
            "thread_id": "t-clip",
            "kind": "person",
            "state": "new",
            "score": 0.8,
            "started_at": started.isoformat(),
        },
    )
    assert event.status_code == 200, event.text
    assert event.json()["clip_id"] is None
    watching = await viewer(ws_base, owner)
    versions = [video(100_000), video(400_000), video(700_000)]
    first = await put_clip(client, device, "t-clip", versions[0], started_at=started.isoformat())
    assert first.status_code == 200, first.text
    clip = first.json()
    pushed = await watching.expect("event")  # the thread's apps learn of its clip at once
    assert (pushed["thread_id"], pushed["clip_id"]) == ("t-clip", clip["id"])
    await watching.socket.close()
    assert (clip["kind"], clip["state"], clip["size"], clip["thread_id"]) == (
        "clip",
        "recording",
        len(versions[0]),
        "t-clip",
    )
    assert clip["ended_at"] is None
    content = f"/api/v1/media/{clip['id']}/content"
    shown = await client.get(f"/api/v1/events/{event.json()['id']}", headers=owner.headers)
    assert shown.json()["clip_id"] == clip["id"]
    assert (await client.get(content, headers=owner.headers)).content == versions[0]
    old_file = await file_id_of(clip["id"])

    second = await put_clip(client, device, "t-clip", versions[1])
    assert (second.status_code, second.json()["id"], second.json()["state"]) == (
        200,
        clip["id"],
        "recording",
    )
    assert (await client.get(content, headers=owner.headers)).content == versions[1]
    assert await chunk_count(old_file) == 0
    assert await stored_file_ids(device.id) == {await file_id_of(clip["id"])}

    last = await put_clip(client, device, "t-clip", versions[2], final="true")
    assert last.status_code == 200
    done = last.json()
    assert (done["id"], done["state"], done["size"]) == (clip["id"], "ready", len(versions[2]))
    assert done["ended_at"] is not None
    assert done["duration_s"] >= 20
    assert (await client.get(content, headers=owner.headers)).content == versions[2]
    final_file = await file_id_of(clip["id"])

    late = await put_clip(client, device, "t-clip", video(1000))
    assert (late.status_code, late.json()["error"]["code"]) == (409, "clip_finished")
    assert await stored_file_ids(device.id) == {final_file}
    listed = await client.get(
        f"/api/v1/devices/{device.id}/media", params={"kind": "clip"}, headers=owner.headers
    )
    assert [m["id"] for m in listed.json()["media"]] == [clip["id"]]
    uploads = await client.get(
        f"/api/v1/devices/{device.id}/media", params={"kind": "upload"}, headers=owner.headers
    )
    assert uploads.json()["media"] == []

    webm = await put_clip(client, device, "t-webm", video(2000, WEBM_HEAD), "video/webm")
    assert (webm.status_code, webm.json()["content_type"]) == (200, "video/webm")


async def test_bad_clip_uploads_are_refused_and_leave_nothing(
    app: Starlette,
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    before = await chunk_count()
    refused = "unsupported_media_type"
    cases: list[tuple[str, bytes, str, dict[str, str], int, str]] = [
        ("t", video(1000), "video/quicktime", {}, 415, refused),
        ("t", b"not a video" * 10, "video/mp4", {}, 415, refused),
        ("t", video(1000, WEBM_HEAD), "video/mp4", {}, 415, refused),
        ("bad thread!", video(1000), "video/mp4", {}, 422, "invalid_request"),
        ("t", video(1000), "video/mp4", {"final": "maybe"}, 422, "invalid_request"),
    ]
    for thread, body, content_type, params, status, code in cases:
        r = await put_clip(client, device, thread, body, content_type, **params)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (thread, params)
    unknown = await client.put(
        f"/api/v1/relays/devices/{MISSING}/clips/t",
        content=video(1000),
        headers={**RELAY, "Content-Type": "video/mp4"},
    )
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "device_not_found")
    as_user = await client.put(
        f"/api/v1/relays/devices/{device.id}/clips/t",
        content=video(1000),
        headers={**owner.headers, "Content-Type": "video/mp4"},
    )
    assert as_user.status_code == 401
    with media_settings(app, media_clip_max_bytes=600_000):
        big = await put_clip(client, device, "t", video(700_000))
        assert (big.status_code, big.json()["error"]["code"]) == (413, "payload_too_large")
        streamed = await client.put(
            f"/api/v1/relays/devices/{device.id}/clips/t",
            content=pieces(video(100_000), 10),
            headers={**RELAY, "Content-Type": "video/mp4"},
        )
        assert streamed.status_code == 413
    assert await stored_file_ids(device.id) == set()
    assert await chunk_count() == before
    listed = await client.get(f"/api/v1/devices/{device.id}/media", headers=owner.headers)
    assert listed.json()["media"] == []


async def pieces(piece: bytes, count: int) -> AsyncIterator[bytes]:
    """A chunked body (no Content-Length): the cap must bite while it streams."""
    for _ in range(count):
        yield piece


async def test_uploads_are_recognised_by_content_capped_and_refusals_leave_nothing(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    for head, content_type in [
        (MOV_HEAD, "video/quicktime"),
        (MKV_HEAD, "video/x-matroska"),
        (WEBM_HEAD, "video/webm"),
    ]:
        r = await upload(client, owner, device, video(3000, head))
        assert (r.status_code, r.json()["content_type"]) == (201, content_type)
    kept = await stored_file_ids(device.id)
    assert len(kept) == 3
    before = await chunk_count()
    for body in (b"\x89PNG\r\n\x1a\n" + b"\x00" * 500, b"", b"GIF89a" * 100):
        r = await upload(client, owner, device, body)
        assert (r.status_code, r.json()["error"]["code"]) == (415, "unsupported_media_type")
        assert "MP4, MOV, MKV or WebM" in r.json()["error"]["message"]
    with media_settings(app, media_upload_max_bytes=600_000):
        declared = await upload(client, owner, device, video(600_001))
        assert (declared.status_code, declared.json()["error"]["code"]) == (
            413,
            "payload_too_large",
        )
        streamed = await client.post(
            f"/api/v1/devices/{device.id}/uploads",
            content=pieces(video(100_000), 10),  # several GridFS chunks written before the cap
            headers=owner.headers,
        )
        assert (streamed.status_code, streamed.json()["error"]["code"]) == (
            413,
            "payload_too_large",
        )
        fits = await upload(client, owner, device, video(600_000))
        assert fits.status_code == 201
    assert len(await stored_file_ids(device.id)) == 4
    assert await chunk_count() == before + 3  # only the upload that fitted: 600,000 bytes


async def test_an_upload_past_the_owners_quota_is_refused_with_its_own_code(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    await User.get_pymongo_collection().update_one(
        {"_id": PydanticObjectId(owner.id)}, {"$set": {"media_quota_bytes": 1_000_000}}
    )
    assert (await upload(client, owner, device, video(600_000))).status_code == 201
    refused = await upload(client, owner, device, video(600_000))
    assert (refused.status_code, refused.json()["error"]["code"]) == (413, "media_quota_exceeded")
    streamed = await client.post(
        f"/api/v1/devices/{device.id}/uploads",
        content=pieces(video(100_000), 6),
        headers=owner.headers,
    )
    assert (streamed.status_code, streamed.json()["error"]["code"]) == (
        413,
        "media_quota_exceeded",
    )
    assert len(await stored_file_ids(device.id)) == 1
    usage = (await client.get("/api/v1/media/usage", headers=owner.headers)).json()
    assert usage == {
        "used_bytes": 600_000,
        "quota_bytes": 1_000_000,
        "retention_days": 30,
        "by_kind": {"upload": 600_000},
    }


async def test_the_device_list_pages_newest_first_and_filters_by_kind(
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    made = []
    for n in range(5):
        r = await put_clip(client, device, f"t-{n}", video(100))
        made.append(r.json()["id"])
    made.append((await upload(client, owner, device, video(100))).json()["id"])
    seen, cursor = [], None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get(
                f"/api/v1/devices/{device.id}/media", params=params, headers=owner.headers
            )
        ).json()
        seen += [m["id"] for m in page["media"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]
    clips = await client.get(
        f"/api/v1/devices/{device.id}/media", params={"kind": "clip"}, headers=owner.headers
    )
    assert [m["id"] for m in clips.json()["media"]] == made[4::-1]
    bad = await client.get(
        f"/api/v1/devices/{device.id}/media", params={"cursor": "x"}, headers=owner.headers
    )
    assert bad.status_code == 400
    bad = await client.get(
        f"/api/v1/devices/{device.id}/media", params={"kind": "film"}, headers=owner.headers
    )
    assert bad.status_code == 422


async def test_a_relay_reports_the_analysis_of_an_upload(
    relay: Peer,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    item = (await upload(client, owner, device, video(1000))).json()
    url = f"/api/v1/relays/uploads/{item['id']}"
    r = await client.patch(url, json={"analysis": "analysing", "progress": 0.4}, headers=RELAY)
    assert r.status_code == 200, r.text
    shown = (await client.get(f"/api/v1/uploads/{item['id']}", headers=owner.headers)).json()
    assert (shown["analysis"], shown["progress"]) == ("analysing", 0.4)
    await client.patch(url, json={"analysis": "analysed"}, headers=RELAY)
    shown = (await client.get(f"/api/v1/uploads/{item['id']}", headers=owner.headers)).json()
    assert (shown["analysis"], shown["progress"]) == ("analysed", 1.0)
    assert (await client.patch(url, json={"analysis": "done"}, headers=RELAY)).status_code == 422
    assert (
        await client.patch(url, json={"analysis": "analysed"}, headers=owner.headers)
    ).status_code == 401
    clip = (await put_clip(client, device, "t-up", video(100))).json()
    not_upload = await client.patch(
        f"/api/v1/relays/uploads/{clip['id']}", json={"analysis": "analysed"}, headers=RELAY
    )
    assert not_upload.status_code == 404
    assert (
        await client.get(f"/api/v1/uploads/{clip['id']}", headers=owner.headers)
    ).status_code == 404


async def test_content_streams_through_a_real_server_in_ranges_as_a_player_asks(
    ws_base: str,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    device = await activate_device(owner)
    data = video(2 * 1024 * 1024)
    item = (await upload(client, owner, device, data)).json()
    url = item["content_url"]
    async with httpx.AsyncClient(base_url=ws_base.replace("ws://", "http://")) as player:
        whole = await player.get(url)
        assert (whole.status_code, whole.content) == (200, data)
        got, start = b"", 0
        while start < len(data):
            r = await player.get(url, headers={"Range": f"bytes={start}-{start + 700_000 - 1}"})
            assert r.status_code == 206
            got += r.content
            start += len(r.content)
        assert got == data
        tail = await player.get(url, headers={"Range": "bytes=-1"})
        assert (tail.status_code, tail.content) == (206, data[-1:])


async def test_removing_a_camera_removes_its_media_and_their_chunks(
    client: httpx.AsyncClient, make_account: MakeAccount, activate_device: ActivateDevice
) -> None:
    owner = await make_account("owner")
    device, other = await activate_device(owner), await activate_device(owner, "Other")
    before = await chunk_count()
    for camera in (device, device, other):
        assert (await upload(client, owner, camera, video(300_000))).status_code == 201
    assert len(await stored_file_ids(device.id)) == 2
    removed = await client.delete(f"/api/v1/devices/{device.id}", headers=owner.headers)
    assert removed.status_code == 204
    assert await stored_file_ids(device.id) == set()
    assert await Media.find({"device_id": PydanticObjectId(device.id)}).count() == 0
    assert await chunk_count() == before + 2  # the other camera's upload only (2 chunks)
    assert len(await stored_file_ids(other.id)) == 1
