"""How a recorded access change reaches the hub of every instance.

Access changes reach the hub from three sides, and the first one wins: the route that made
the change (:meth:`AccessChanges.enforce`), the broadcast channel, and the database record
that every instance reads every ``ACCESS_POLL_S`` (:meth:`AccessChanges.read`) — so a change
is enforced everywhere within about a second even when the bus lost its broadcast. The hub
applies each change once, by its id (:class:`~cloud.signaling.sessions.Revocations`): the
price of not depending on the bus is one small query per instance each ``ACCESS_POLL_S``.
"""

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from cloud import metrics
from cloud.devices.models import AccessChange
from cloud.signaling import envelopes
from cloud.signaling.bus import Bus, BusUnavailable
from cloud.signaling.deliveries import BROADCAST
from cloud.signaling.envelopes import Access
from cloud.signaling.sessions import Revocations

log = logging.getLogger(__name__)

ACCESS_POLL_S = 0.5
# How far before the last read access changes are read again: covers the clocks of
# instances that differ and a record that became visible after a read had begun.
ACCESS_LOOKBACK_S = 10.0


def _now() -> datetime:
    return datetime.now(UTC)


class AccessChanges:
    """Applies access changes to this instance's hub: ``apply`` one (the edge's step, under
    its lock); ``known`` is the hub's memory of the changes it applied."""

    def __init__(
        self, bus: Bus, known: Revocations, apply: Callable[[Access], Awaitable[None]]
    ) -> None:
        self._bus = bus
        self._known = known
        self._apply = apply
        self._read_at = _now()

    async def enforce(self, change: AccessChange) -> None:
        """Apply a recorded access change here now, and broadcast it to the other instances.

        The broadcast only makes it sooner: without it they read the record within
        ``ACCESS_POLL_S``, so an unavailable bus is no error here.
        """
        envelope = _envelope(change)
        await self._apply(envelope)
        try:
            await self._bus.publish(BROADCAST, envelopes.encode(envelope))
        except BusUnavailable:
            metrics.BUS_PUBLISH_ERRORS.inc()
            log.info(
                "bus unavailable: instances read access change %s from the database", change.id
            )

    async def read(self) -> None:
        """Apply the access changes recorded lately, whether or not the bus brought them."""
        started = _now()
        since = self._read_at - timedelta(seconds=ACCESS_LOOKBACK_S)
        for change in await AccessChange.find(AccessChange.at >= since).to_list():
            if str(change.id) not in self._known.changes:  # read again: known
                await self._apply(_envelope(change))
        self._read_at = started


def _envelope(change: AccessChange) -> Access:
    return Access(str(change.id), str(change.device_id or ""), tuple(change.grants), change.reason)
