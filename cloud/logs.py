"""Logging: one line per record, every line tagged with the request id that caused it and
the principal it acts for.

The request id comes from a valid ``X-Request-ID`` header or is generated; it is stored in
a context variable so that log lines written anywhere during the request carry it. The
principal (a user, device or relay id, never a token) is set once the request or the
signaling connection is authenticated. ``LOG_FORMAT=json``: one JSON object per line
(protocol.logs); text is the default.
"""

import contextvars
import logging
import re
import secrets

from protocol.logs import configure

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# {"user_id": ...} / {"device_id": ...} / {"relay_id": ...}: who the request or connection is
principal_var: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "principal", default=None
)
PRINCIPAL_FIELDS = {"user": "user_id", "device": "device_id", "relay": "relay_id"}


def set_principal(kind: str, principal_id: str) -> None:
    """Tag this request's or connection's log lines with who it acts for (``kind``: user,
    device or relay)."""
    principal_var.set({PRINCIPAL_FIELDS[kind]: principal_id})


def describe(principal: object) -> tuple[str, str] | None:
    """The kind and id of an authenticated principal (cloud.http's ``auth`` results)."""
    if isinstance(principal, str):
        return "relay", principal  # require_relay gives the relay's id
    for kind in ("user", "device"):
        value = getattr(principal, f"{kind}_id", None)
        if value is not None:
            return kind, str(value)
    peer = getattr(principal, "name", None)  # PeerPrincipal: "user:<id>" / "device:<id>"
    if isinstance(peer, str) and ":" in peer:
        kind, _, value = peer.partition(":")
        if kind in PRINCIPAL_FIELDS:
            return kind, value
    return None


_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


def new_request_id(offered: str | None) -> str:
    if offered and _VALID_ID.match(offered):
        return offered
    return secrets.token_hex(8)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        principal = principal_var.get()
        if principal:
            for name, value in principal.items():
                setattr(record, name, value)
        return True


FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "INFO") -> str:
    """Install the request-id format (``LOG_FORMAT``: text or json) on the root logger (CLIs
    call this; tests do not); returns the format."""
    fmt = configure(level, FORMAT, RequestIdFilter())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # cloud.http writes the access log
    logging.getLogger("pymongo").setLevel(logging.WARNING)
    return fmt
