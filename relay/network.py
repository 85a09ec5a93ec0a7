"""Which local addresses the relay's WebRTC peers offer as ICE host candidates.

aioice (under aiortc) has no option for it: ``Connection.gather_candidates`` binds one socket
per address returned by its module function ``aioice.ice.get_host_addresses``, which lists
every interface and always drops ``127.0.0.1``. With ``ICE_HOST_ADDRESSES`` set (loopback in
tests and local runs, docs/design.md "Hermetic network"), :func:`use_host_addresses` replaces that
function for the whole process; the relay's composition root calls it once at start.
(``device_sim.network`` does the same for the simulator: the packages never import each other.)
"""

import ipaddress
from collections.abc import Sequence

import aioice.ice


def use_host_addresses(addresses: Sequence[str]) -> None:
    """Make aioice gather host candidates from ``addresses`` only, for the whole process.

    ``addresses`` are IPv4 or IPv6 literals; aioice's ``use_ipv4``/``use_ipv6`` flags still
    filter them. Raises :class:`ValueError` for an empty list or a string that is not an IP
    literal; calling it again replaces the list. Relay and server-reflexive candidates are
    unaffected.
    """
    chosen = [ipaddress.ip_address(address.strip()) for address in addresses]
    if not chosen:
        raise ValueError("no host address given (use a relay-only ICE policy to offer none)")

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            str(address) for address in chosen if (use_ipv4 if address.version == 4 else use_ipv6)
        ]

    aioice.ice.get_host_addresses = get_host_addresses
