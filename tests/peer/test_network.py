"""The host-address override of aioice."""

from collections.abc import Iterator

import aioice.ice
import pytest

from peer.network import host_addresses_from_env, use_host_addresses


@pytest.fixture(autouse=True)
def original_host_addresses() -> Iterator[None]:
    original = aioice.ice.get_host_addresses
    yield
    aioice.ice.get_host_addresses = original


def test_ice_host_addresses_come_from_a_comma_list_and_unset_means_all_interfaces() -> None:
    assert host_addresses_from_env({"ICE_HOST_ADDRESSES": " 127.0.0.1, ::1 ,"}) == [
        "127.0.0.1",
        "::1",
    ]
    assert host_addresses_from_env({"ICE_HOST_ADDRESSES": ""}) == []
    assert host_addresses_from_env({}) == []
    with pytest.raises(ValueError, match="does not appear to be an IP"):
        use_host_addresses(["localhost"])
    with pytest.raises(ValueError, match="no host address"):
        use_host_addresses([])


def test_the_host_address_list_replaces_aioices_interface_scan_for_the_process() -> None:
    use_host_addresses(["127.0.0.1", "::1"])
    try:
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
    finally:
        use_host_addresses(["127.0.0.1"])
