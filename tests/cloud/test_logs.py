"""LOG_FORMAT=json in process: one JSON object per line with the request id and the principal.
Every line of a full journey, checked for secrets, is tests/e2e/test_metrics.py."""

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from cloud.logs import RequestIdFilter
from protocol.logs import JsonFormatter, log_format
from tests.conftest import MakeAccount


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_json_lines_carry_time_level_logger_request_id_and_principal(
    client: httpx.AsyncClient, make_account: MakeAccount, lines: io.StringIO
) -> None:
    account = await make_account()
    answer = await client.get(
        "/api/v1/devices", headers={**account.headers, "X-Request-ID": "journey-0001"}
    )
    assert answer.headers["x-request-id"] == "journey-0001"
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert records
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
        assert record["time"].endswith("+00:00")
    access = [r for r in records if r["logger"] == "cloud.access" and "/devices" in r["message"]]
    assert access, records
    assert access[-1]["request_id"] == "journey-0001"
    assert access[-1]["user_id"] == account.id
    assert access[-1]["level"] == "INFO"


def test_a_traceback_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "failed", None, None)
        import sys

        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exception"]


def test_log_format_is_text_unless_json() -> None:
    assert log_format({}) == "text"
    assert log_format({"LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        log_format({"LOG_FORMAT": "xml"})
