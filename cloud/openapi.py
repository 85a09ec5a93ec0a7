"""The OpenAPI 3.1 document, built from the endpoint declarations, and the local docs page.

Swagger UI's files come from the ``swagger-ui-bundle-v2`` wheel and are served by the
cloud itself: the docs work offline and load nothing from a CDN.
"""

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from cloud.http import Endpoint
from protocol.api import ErrorBody

REF = "#/components/schemas/{model}"
ERROR_TEXT = {
    400: "Malformed request (not JSON)",
    401: "Missing or invalid credentials",
    403: "Not allowed for your role",
    404: "Unknown resource, or not yours",
    409: "Conflict with the current state",
    410: "Expired",
    413: "Body larger than 64 KiB",
    415: "Body is not application/json",
    422: "Invalid fields",
    429: "Throttled; see Retry-After",
    503: "A dependency is down; see Retry-After",
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}}


def build_document(endpoints: list[Endpoint], version: str) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for ep in endpoints:
        if ep.body is not None:
            models.append((ep.body, "validation"))
        if ep.response is not None:
            models.append((ep.response, "serialization"))
    _, schemas = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "VisionConnect cloud API",
            "version": version,
            "description": "Accounts, camera onboarding, devices and sharing. "
            'Errors are {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": ep.handler.__name__,
        "summary": ep.summary,
        "tags": [ep.tag],
        "responses": {},
    }
    if ep.description:
        op["description"] = ep.description
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in re.findall(r"{(\w+)}", ep.path)
    ]
    if ep.query is not None:
        schema = ep.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema["properties"].items():
            prop = {k: v for k, v in prop.items() if k not in ("title", "default")}
            if "anyOf" in prop:  # "X | None" in a query string is just an optional X
                rest = {k: v for k, v in prop.items() if k != "anyOf"}
                prop = next(p for p in prop["anyOf"] if p.get("type") != "null") | rest
            params.append(
                {"name": name, "in": "query", "required": name in required, "schema": prop}
            )
    if params:
        op["parameters"] = params
    if ep.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model=ep.body.__name__)}}
            },
        }
    ok: dict[str, Any] = {"description": "Success"}
    if ep.response is not None:
        ok["content"] = {
            ep.media_type: {"schema": {"$ref": REF.format(model=ep.response.__name__)}}
        }
    op["responses"][str(ep.status)] = ok
    errors = set(ep.errors) | {503}
    if ep.body is not None:
        errors |= {400, 413, 415, 422}
    if ep.query is not None:
        errors |= {422}
    if ep.auth is not None:
        errors |= {401}
        op["security"] = [{"bearer": []}]
    else:
        op["security"] = []
    if "{" in ep.path:
        errors |= {404}
    for status in sorted(errors):
        response: dict[str, Any] = {
            "description": ERROR_TEXT[status],
            "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
        }
        if status in (429, 503):
            response["headers"] = RETRY_AFTER
        op["responses"][str(status)] = response
    return op


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>VisionConnect API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
<script src="/docs/init.js"></script>
</body></html>"""

DOCS_INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "StandaloneLayout", validatorUrl: null
});"""


def openapi_endpoint(document: dict[str, Any]) -> Any:
    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    return openapi


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


async def docs_init(request: Request) -> Response:
    return Response(DOCS_INIT, media_type="text/javascript")
