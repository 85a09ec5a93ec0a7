import asyncio
import base64
import hashlib
import hmac
from pathlib import Path

import aioice.stun
import aioice.turn
import pytest

from cloud.ice import ice_servers, turn_credential
from cloud.settings import Settings
from tests.servers import coturn_server

SECRET = "turn-secret-for-tests-0123456789"


def test_turn_credentials_follow_the_coturn_rest_scheme() -> None:
    username, credential = turn_credential("s3cret", "user:42", 600, now=1_700_000_000.7)
    assert username == "1700000600:user:42"
    expected = hmac.new(b"s3cret", b"1700000600:user:42", hashlib.sha1).digest()
    assert base64.b64decode(credential) == expected


def test_no_configured_servers_means_an_empty_list_never_a_public_default() -> None:
    assert ice_servers(Settings(), "user:1") == []
    only_stun = ice_servers(Settings(stun_urls=("stun:127.0.0.1:3478",)), "user:1")
    assert [s.dump() for s in only_stun] == [{"urls": ["stun:127.0.0.1:3478"]}]
    # TURN URLs without a secret would hand out credentials coturn refuses: none are given.
    assert ice_servers(Settings(turn_urls=("turn:127.0.0.1:3478",)), "user:1") == []


class _Sink(asyncio.DatagramProtocol):
    pass


async def allocate(port: int, username: str, password: str) -> tuple[str, int]:
    transport, _ = await aioice.turn.create_turn_endpoint(
        _Sink, ("127.0.0.1", port), username, password, transport="udp"
    )
    try:
        relayed: tuple[str, int] = transport.get_extra_info("sockname")
        return relayed
    finally:
        transport.close()


async def test_coturn_allocates_with_minted_credentials_and_refuses_a_wrong_secret(
    tmp_path: Path,
) -> None:
    with coturn_server(SECRET, tmp_path / "coturn.log") as port:
        url = f"turn:127.0.0.1:{port}?transport=udp"
        good = ice_servers(Settings(turn_urls=(url,), turn_secret=SECRET), "user:abc")[0]
        assert good.username is not None
        assert good.credential is not None
        host, relay_port = await allocate(port, good.username, good.credential)
        assert host == "127.0.0.1"
        assert relay_port > 0
        bad = ice_servers(Settings(turn_urls=(url,), turn_secret="not-the-secret"), "user:abc")[0]
        assert bad.username is not None
        assert bad.credential is not None
        with pytest.raises(aioice.stun.TransactionFailed):
            await allocate(port, bad.username, bad.credential)
