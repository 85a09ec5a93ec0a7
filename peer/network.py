"""Which local addresses WebRTC peers offer as ICE host candidates (docs/design.md).

aioice (under aiortc) has no option to choose them: ``Connection.gather_candidates`` binds one
socket per address returned by its module function ``aioice.ice.get_host_addresses``, which
lists every interface and always drops ``127.0.0.1``. Tests and local runs need the opposite
(loopback only, so that no packet reaches the machine's LAN addresses), so
:func:`use_host_addresses` replaces that function. The replacement is process-wide: every
aiortc peer created afterwards in this process, whatever its owner, gathers host candidates
from the given addresses only. Call it once, at process start, from the composition root.
"""

import ipaddress
from collections.abc import Mapping, Sequence

import aioice.ice

ENV_NAME = "ICE_HOST_ADDRESSES"


def use_host_addresses(addresses: Sequence[str]) -> None:
    """Make aioice gather host candidates from ``addresses`` only, for the whole process.

    ``addresses`` are IPv4 or IPv6 literals (``["127.0.0.1"]`` in tests and local runs); an
    address that no interface holds is skipped by aioice when it fails to bind. aioice's own
    ``use_ipv4``/``use_ipv6`` flags still filter the list. Raises :class:`ValueError` for an
    empty list or an address that is not an IP literal; calling it again replaces the list.
    Server-reflexive and relay candidates are unaffected. Raises :class:`RuntimeError` when
    aioice no longer has the function (peer/internals.py checks that it still calls it).
    """
    chosen = [ipaddress.ip_address(address.strip()) for address in addresses]
    if not chosen:
        raise ValueError("no host address given (use a relay-only ICE policy to offer none)")
    if not callable(getattr(aioice.ice, "get_host_addresses", None)):
        # Replacing a function aioice no longer calls would silently offer every interface.
        raise RuntimeError("aioice changed: no aioice.ice.get_host_addresses to replace")

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            str(address) for address in chosen if (use_ipv4 if address.version == 4 else use_ipv6)
        ]

    aioice.ice.get_host_addresses = get_host_addresses


def host_addresses_from_env(environ: Mapping[str, str]) -> list[str]:
    """The addresses listed in ``ICE_HOST_ADDRESSES`` (comma-separated).

    Unset or empty answers ``[]``: leave aioice alone, so host candidates come from every
    interface (production). Entries are stripped; :func:`use_host_addresses` validates them.
    """
    raw = environ.get(ENV_NAME, "")
    return [item.strip() for item in raw.split(",") if item.strip()]
