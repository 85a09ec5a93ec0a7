"""Keeping a camera's password out of what people and logs see.

An RTSP or ONVIF URL may carry the camera's password (``rtsp://user:pass@host/…``, or a
``password=`` query value some cameras add), and libraries echo URLs in their errors and debug
logs. :func:`redact` shows a URL with ``***`` in the password's place, :func:`scrub` takes a
known password out of any text, in the forms it takes in URLs and SOAP messages, and
:func:`password_kept_out_of_logs` does so for every log record while a block runs.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape

REDACTED = "***"
CREDENTIAL_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "pass", "psw", "token"})


def redact(uri: str, password: str | None = None) -> str:
    """``uri`` with the password of its user info and credential query values as ``***``.

    The given ``password`` is replaced wherever else it appears, too.
    """
    try:
        parts = urlsplit(uri)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.partition(":")[0]
            netloc = f"{user}:{REDACTED}@{hostport}"
        query = parts.query
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in CREDENTIAL_QUERY_KEYS for k, _ in pairs):
            query = urlencode(
                [(k, REDACTED if k.lower() in CREDENTIAL_QUERY_KEYS else v) for k, v in pairs],
                safe="*",
            )
        uri = urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        pass  # not a URL: only the literal password goes
    return scrub(uri, password)


def scrub(text: str, password: str | None) -> str:
    """``text`` with ``password`` replaced by ``***``: as is, percent-encoded, XML-escaped
    and as in a ``bytes`` repr (the forms it takes in URIs and in logged SOAP messages)."""
    if not password:
        return text
    forms = {
        password,
        quote(password, safe=""),
        escape(password, {'"': "&quot;", "'": "&apos;"}),
        repr(password.encode())[2:-1],
    }
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text


class _ScrubFilter(logging.Filter):
    """Takes the password out of every record a handler writes (message and traceback)."""

    def __init__(self, password: str) -> None:
        super().__init__()
        self.password = password

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage(), self.password)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.password)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.password)
        return True


@contextmanager
def password_kept_out_of_logs(password: str | None) -> Iterator[None]:
    """While inside, the root logger's handlers write no ``password``.

    At DEBUG level onvif-zeep-async logs every SOAP message in full, and a camera may put
    the password into the stream URIs it returns.
    """
    if not password:
        yield
        return
    handlers = list(logging.getLogger().handlers)
    scrubber = _ScrubFilter(password)
    for handler in handlers:
        handler.addFilter(scrubber)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(scrubber)


def scrub_all(value: Any, password: str) -> Any:
    """``value`` (JSON-like) with :func:`scrub` applied to each of its strings."""
    if isinstance(value, str):
        return scrub(value, password)
    if isinstance(value, list):
        return [scrub_all(v, password) for v in value]
    if isinstance(value, dict):
        return {k: scrub_all(v, password) for k, v in value.items()}
    return value
