"""One log line per record, as text or (``LOG_FORMAT=json``) one JSON object per line for log
pipelines; shared by the cloud, relay nodes and the camera agent.

A JSON line holds ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message``, the ``request_id`` and principal ids (``user_id``, ``device_id``, ``relay_id``)
when the process sets them on the record (the cloud's filters do), and ``exception`` with the
traceback when there is one.
"""

import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime

FORMATS = ("text", "json")
CONTEXT_FIELDS = ("request_id", "user_id", "device_id", "relay_id", "connection_id")


class JsonFormatter(logging.Formatter):
    """A record as one JSON object (no newline inside: tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value not in (None, "", "-"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def log_format(env: Mapping[str, str] | None = None) -> str:
    """``LOG_FORMAT`` from the environment: ``text`` (the default) or ``json``."""
    value = (os.environ if env is None else env).get("LOG_FORMAT", "text").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be 'text' or 'json', not {value!r}")
    return value


def formatter(fmt: str, text_format: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(text_format)


def configure(level: str, text_format: str, *filters: logging.Filter) -> str:
    """Install one stderr handler on the root logger in ``LOG_FORMAT``; returns the format."""
    fmt = log_format()
    handler = logging.StreamHandler()
    for f in filters:
        handler.addFilter(f)
    handler.setFormatter(formatter(fmt, text_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return fmt
