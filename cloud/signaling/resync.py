"""Resync after a gap in the bus: what the hub does when messages may have been lost.

The bus may lose this instance's subscription (a Redis restart, a network gap): whatever
other instances publish for the connections here meanwhile is lost. Two things follow, both
pure (deliveries out, ``cloud.signaling.hub``): the user connections that were here are
told to reconnect (:func:`users`), and the sessions whose viewer is elsewhere and may have
ended unheard are hung up (:func:`orphans`). The edge (``cloud.signaling.ws``) decides
which connections the gap touched and when the bus is back.
"""

import secrets
from collections.abc import Mapping

from cloud.signaling.deliveries import CLOSE_RESYNC, Close, Delivery, Send
from cloud.signaling.sessions import Connection
from cloud.signaling.sides import Sides
from protocol.messages import GoAway

RESYNC_SPREAD_MS = 3000


def users(connections: Mapping[str, Connection], conns: list[str]) -> list[Delivery]:
    """The bus may lose messages for ``conns`` (a gap in this instance's subscription, a
    Redis restart): each user connection among them is told to go away and closed with
    ``CLOSE_RESYNC``, so the app reconnects and reads presence and events afresh (the
    event stream resumes from its ``Last-Event-ID``) instead of missing them silently.

    Its sessions end with it (their answer or candidates may be lost too). Cameras and
    relay nodes stay: what they miss are session messages, whose viewers time out and
    ask again; reconnecting every camera on a Redis restart would be a reconnect storm.
    Reconnections are spread over ``RESYNC_SPREAD_MS`` by the ``go_away``.
    """
    out: list[Delivery] = []
    for conn in conns:
        info = connections.get(conn)
        if info is None or info.role != "user":
            continue
        after_ms = secrets.randbelow(RESYNC_SPREAD_MS)
        out.append(Send(conn, GoAway(reconnect_after_ms=after_ms, reason="resync")))
        out.append(Close(conn, CLOSE_RESYNC, "messages may have been missed: reconnect"))
    return out


def orphans(sides: Sides, lost_at: float) -> list[Delivery]:
    """After a gap in this instance's bus subscription (from ``lost_at``): a session here
    whose viewer is on another instance may have ended there unheard (its end crossed
    the bus meanwhile) and would keep one of the camera's viewer places for good. Each
    one opened before the gap ends (``resync``): the camera hangs up, and a viewer still
    there hears it and asks again. Call it once the bus is back, so the viewer can hear."""
    out: list[Delivery] = []
    for side in list(sides.camera_sides.values()):
        if side.id not in sides.viewer_sides and side.opened_at < lost_at:
            out += sides.end_camera_side(side, "resync")
    return out
