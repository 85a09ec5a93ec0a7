"""Which STUN and TURN URLs answer from here: probed against coturn on loopback."""

import socket
import time
from collections.abc import Iterator

import pytest

from peer import reach
from tests.servers import coturn_server

SECRET = "reach-turn-secret-0123456789"


@pytest.fixture(scope="module")
def turn_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with coturn_server(SECRET, tmp_path_factory.mktemp("coturn") / "coturn.log") as port:
        yield port


@pytest.fixture(autouse=True)
def fresh() -> None:
    reach.forget()


@pytest.fixture
def dead() -> Iterator[int]:
    """A UDP port where nothing answers (a bound socket that never reads): UDP dropped."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def turn(urls: list[str]) -> dict[str, object]:
    return {"urls": urls, "username": "u", "credential": "c"}


async def test_udp_first_when_every_url_answers(turn_port: int) -> None:
    udp, tcp = (
        f"turn:127.0.0.1:{turn_port}?transport=udp",
        f"turn:127.0.0.1:{turn_port}?transport=tcp",
    )
    found = await reach.reachable([{"urls": [f"stun:127.0.0.1:{turn_port}"]}, turn([tcp, udp])])
    assert found.servers == [{"urls": [f"stun:127.0.0.1:{turn_port}"]}, turn([udp, tcp])]
    assert found.silent == []
    assert found.turn_answered == udp


async def test_a_network_that_drops_udp_gets_turn_over_tcp_within_the_probe_timeout(
    turn_port: int, dead: int
) -> None:
    stun_url = f"stun:127.0.0.1:{dead}"
    udp = f"turn:127.0.0.1:{dead}?transport=udp"
    tcp = f"turn:127.0.0.1:{turn_port}?transport=tcp"
    started = time.monotonic()
    found = await reach.reachable([{"urls": [stun_url]}, turn([udp, tcp])])
    assert time.monotonic() - started < reach.PROBE_TIMEOUT_S + 0.3
    assert found.servers == [turn([tcp])]  # no STUN: it would only be waited for
    assert found.silent == [stun_url, udp]
    assert found.turn_answered == tcp
    started = time.monotonic()
    again = await reach.reachable([{"urls": [stun_url]}, turn([udp, tcp])])
    assert again == found
    assert time.monotonic() - started < 0.05  # remembered


async def test_when_no_turn_url_answers_aiortc_gets_them_all_and_the_reason_is_observed(
    dead: int,
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    tcp_port = closed.getsockname()[1]
    closed.close()  # refused
    udp, tcp = f"turn:127.0.0.1:{dead}?transport=udp", f"turn:127.0.0.1:{tcp_port}?transport=tcp"
    found = await reach.reachable([turn([udp, tcp])])
    assert found.servers == [turn([udp, tcp])]
    assert found.turn_answered is None
    assert found.explain() == f"no answer from {udp}, {tcp} within {reach.PROBE_TIMEOUT_S:g} s"


async def test_no_servers_no_probe() -> None:
    assert (await reach.reachable([])).servers == []
