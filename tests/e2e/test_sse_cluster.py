"""The event stream across two cloud instances on one Redis: a stream held by instance b
hears what instance a pushes (an activation, a camera's presence), as a WebSocket would."""

import httpx

from tests.cloud.signaling.test_sse import stream
from tests.e2e.cluster import Cluster, account, camera_on, device_of


async def test_a_stream_on_one_instance_hears_pushes_made_on_the_other(
    cluster: Cluster, http: httpx.AsyncClient
) -> None:
    owner = await account(http, "sse-owner")  # through instance a
    async with stream(cluster.b.http, owner.tokens["access_token"]) as events:
        welcome = await events.next()
        assert welcome["event"] == "welcome"
        assert welcome["data"]["connection_id"]

        device = await device_of(http, owner)  # onboarded and activated through a
        activated = await events.expect("device.activated")
        assert activated["data"]["device_id"] == device.id

        camera = await camera_on(cluster.a, device)  # the camera's connection on a
        online = await events.expect("device.presence")
        assert (online["data"]["device_id"], online["data"]["online"]) == (device.id, True)
        await camera.socket.close()
        offline = await events.expect("device.presence")
        assert offline["data"]["online"] is False
        assert {online["id"], offline["id"]} == {welcome["id"]}  # no event yet: one resume point
