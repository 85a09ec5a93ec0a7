"""Logging: one line per record, every line tagged with the request id that caused it.

The request id comes from a valid ``X-Request-ID`` header or is generated; it is stored in
a context variable so that log lines written anywhere during the request carry it.
"""

import contextvars
import logging
import re
import secrets

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


def new_request_id(offered: str | None) -> str:
    if offered and _VALID_ID.match(offered):
        return offered
    return secrets.token_hex(8)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Install the request-id format on the root logger (CLIs call this; tests do not)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # cloud.http writes the access log
    logging.getLogger("pymongo").setLevel(logging.WARNING)
