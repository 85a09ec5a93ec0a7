"""The relay node's side of uploaded videos (docs/protocol.md, "Media"): the cloud gives each
upload waiting for analysis to a relay node (cloud.analysis.assignment, ``relay.assign``
``uploads``); the node reads the file here, analyses it like a camera's stream, reports
its events (``POST /relays/events`` with ``source: "upload"`` and offsets into the file) and
its progress (``PATCH /relays/uploads/{id}``)."""

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cloud.devices.access import parse_id
from cloud.errors import NotFound
from cloud.http import Endpoint
from cloud.media.catalog import live, media_store
from cloud.media.models import Media
from cloud.relays.routes import require_relay


async def upload_content(request: Request) -> Response:
    """The uploaded file, whole, for the relay node analysing it (404 for any other)."""
    doc = await Media.find_one(
        {
            "_id": parse_id(request.path_params["upload_id"], "upload"),
            "kind": "upload",
            "analysis_relay": request.state.principal,
            **live(),
        }
    )
    if doc is None or doc.file_id is None:
        raise NotFound("no such upload for this relay node")
    chunks = await media_store(request).read(doc.file_id, 0, doc.size)
    headers = {"Content-Length": str(doc.size)}
    return StreamingResponse(chunks, headers=headers, media_type=doc.content_type)


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/relays/uploads/{upload_id}/content",
        upload_content,
        "Relay node: the uploaded video it was given to analyse",
        "relays",
        media_type="application/octet-stream",
        errors=(404,),
        auth=require_relay,
    ),
]
