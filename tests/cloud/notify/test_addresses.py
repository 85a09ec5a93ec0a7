"""The URL schema of webhooks and push endpoints against the server's own parsing: a URL the
schema accepts is never refused as malformed (schemathesis found one that was), and a
malformed one is refused with a reason, never an exception."""

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from py_vapid import Vapid02
from pydantic import TypeAdapter, ValidationError

from cloud.notify.addresses import RefusedAddress, split
from cloud.notify.push import PushSender
from cloud.settings import Settings
from protocol.notify import HttpUrl, PushEndpoint

URL = TypeAdapter(HttpUrl)
ENDPOINT = TypeAdapter(PushEndpoint)
_KEY = Vapid02()
_KEY.generate_keys()
SENDER = PushSender(Settings(), _KEY)
PATTERN = re.compile(URL.json_schema()["pattern"])


@settings(max_examples=400, deadline=None)
@given(st.from_regex(PATTERN, fullmatch=True))
def test_every_url_the_schema_accepts_splits(url: str) -> None:
    try:
        URL.validate_python(url)
    except ValidationError:
        return  # shorter than min_length: the schema refuses it too
    scheme, host, port = split(url)
    assert scheme in ("http", "https")
    assert host
    assert 0 <= port <= 65535


@pytest.mark.parametrize(
    "url",
    [
        "https:///nohost",
        "https://user:secret@example.com/hook",
        "https://example.com:65536/hook",
        "https://example.com:/hook",
        "https://[:::]/hook",
        "https://[1.2.3.4]/hook",
        "https://exa\uff03mple.com/hook",
        "https://\u00a2/hook",
        "ftp://example.com/hook",
    ],
)
def test_a_malformed_url_is_refused_by_schema_and_server(url: str) -> None:
    with pytest.raises(ValidationError):
        URL.validate_python(url)
    with contextlib.suppress(RefusedAddress):  # the server says why, never raises else
        split(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://push.example.com/send/abc?x=1#f",
        "http://127.0.0.1:9/hook",
        "http://[::1]:9/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "https://[2001:db8::1]:8443/hook",
        "https://xn--bcher-kva.example/hook",
    ],
)
def test_a_wellformed_url_is_taken(url: str) -> None:
    assert URL.validate_python(url) == url
    split(url)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(re.compile(ENDPOINT.json_schema()["pattern"]), fullmatch=True))
def test_every_push_endpoint_the_schema_accepts_gets_a_vapid_signature(url: str) -> None:
    try:
        ENDPOINT.validate_python(url)
    except ValidationError:
        return  # shorter than min_length
    split(url)
    assert SENDER.authorization(url)["Authorization"].startswith("vapid t=")


def test_an_ipv6_literal_is_a_webhook_url_but_no_push_endpoint() -> None:
    URL.validate_python("https://[2001:db8::1]/hook")
    with pytest.raises(ValidationError):
        ENDPOINT.validate_python("https://[2001:db8::1]/push")
