import httpx
from beanie import PydanticObjectId
from starlette.applications import Starlette

from cloud.media.catalog import delete_device_media, delete_owner_media
from tests.cloud.media.conftest import chunk_count, file_id_of, stored_file_ids, upload, video
from tests.conftest import ActivateDevice, MakeAccount


async def test_deleting_a_devices_media_removes_its_documents_and_files_only(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner = await make_account("owner")
    front, back = await activate_device(owner, "Front"), await activate_device(owner, "Back")
    for device in (front, front, back):
        assert (await upload(client, owner, device, video(300_000))).status_code == 201
    front_files = await stored_file_ids(front.id)
    assert len(front_files) == 2
    removed = await delete_device_media(app.state.media_store, PydanticObjectId(front.id))
    assert removed == 2
    assert await stored_file_ids(front.id) == set()
    for file_id in front_files:
        assert await chunk_count(file_id) == 0
    listed = await client.get(f"/api/v1/devices/{front.id}/media", headers=owner.headers)
    assert listed.json()["media"] == []
    assert len(await stored_file_ids(back.id)) == 1
    assert await delete_device_media(app.state.media_store, PydanticObjectId(front.id)) == 0


async def test_deleting_an_owners_media_removes_everything_they_pay_for(
    app: Starlette,
    client: httpx.AsyncClient,
    make_account: MakeAccount,
    activate_device: ActivateDevice,
) -> None:
    owner, other = await make_account("owner"), await make_account("other")
    mine = [await activate_device(owner, "A"), await activate_device(owner, "B")]
    theirs = await activate_device(other)
    items = [(await upload(client, owner, d, video(1000))).json()["id"] for d in mine]
    kept = (await upload(client, other, theirs, video(1000))).json()["id"]
    kept_file = await file_id_of(kept)
    assert await delete_owner_media(app.state.media_store, PydanticObjectId(owner.id)) == 2
    for device in mine:
        assert await stored_file_ids(device.id) == set()
    for item in items:
        assert (await client.get(f"/api/v1/media/{item}", headers=owner.headers)).status_code == 404
    assert await stored_file_ids(theirs.id) == {kept_file}
