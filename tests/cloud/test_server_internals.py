"""uvicorn's and websockets' internals that the direct signaling sockets use are there, and a
missing one stops the cloud at start (cloud/signaling/server_internals.py,
cloud/signaling/direct_socket.py)."""

import pytest
import uvicorn.server
from starlette.applications import Starlette

from cloud.signaling import direct_socket, server_internals


def test_the_pinned_uvicorn_and_websockets_have_what_direct_sockets_use() -> None:
    assert server_internals.internals_problems() == []
    assert issubclass(direct_socket.websocket_protocol(Starlette()), direct_socket.DirectSocket)


def test_a_changed_server_state_stops_the_cloud_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    class Changed:
        def __init__(self) -> None:
            self.connections: list[object] = []  # no longer a set

    monkeypatch.setattr(server_internals, "ServerState", Changed)
    monkeypatch.setattr(uvicorn.server, "ServerState", Changed)
    assert any("ServerState.connections" in p for p in server_internals.internals_problems())
    with pytest.raises(RuntimeError, match="ServerState"):
        direct_socket.websocket_protocol(Starlette())


def test_a_missing_ws_implementation_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_internals, "WS_PROTOCOLS", {"websockets": "x:y"})
    assert any("WS_PROTOCOLS" in p for p in server_internals.internals_problems())
