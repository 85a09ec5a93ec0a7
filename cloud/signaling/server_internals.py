"""What cloud/signaling/direct_socket.py relies on in uvicorn and websockets beyond their
public API, checked against the installed versions (tests/cloud/test_server_internals.py)."""

import inspect

from uvicorn.config import WS_PROTOCOLS, Config
from uvicorn.server import ServerState
from websockets.protocol import Protocol
from websockets.server import ServerProtocol


def internals_problems() -> list[str]:
    """What this module relies on in uvicorn and websockets beyond their public API (both are
    pinned exactly in pyproject.toml for it), checked against the installed versions; empty
    when all is there. A change would otherwise show only under load or at shutdown."""
    import uvicorn.protocols.http.h11_impl as h11_impl
    import uvicorn.protocols.http.httptools_impl as httptools_impl
    import uvicorn.server

    found = []
    if not isinstance(WS_PROTOCOLS, dict) or not {"websockets-sansio", "wsproto"} <= set(
        WS_PROTOCOLS
    ):
        found.append("uvicorn.config.WS_PROTOCOLS naming websockets-sansio and wsproto")
    state = ServerState()
    if not isinstance(getattr(state, "connections", None), set):
        found.append("ServerState.connections, a set (its members' shutdown() is called)")
    if not isinstance(getattr(state, "tasks", None), set):
        found.append("ServerState.tasks, a set uvicorn waits for")
    if "connection.shutdown()" not in inspect.getsource(uvicorn.server.Server.shutdown):
        found.append("Server.shutdown calling each connection's shutdown()")
    # The upgrade hand-over: the HTTP protocol builds the ws class with these keywords, then
    # gives it the transport and the request's bytes.
    for module in (h11_impl, httptools_impl):
        source = inspect.getsource(module)
        for step in (
            "self.ws_protocol_class(",
            "server_state=self.server_state",
            "app_state=self.app_state",
            "protocol.connection_made(self.transport)",
            "protocol.data_received(",
        ):
            if step not in source:
                found.append(f"{module.__name__}: the upgrade hand-over ({step})")
    for option in ("ws_ping_interval", "ws_ping_timeout", "ws_max_size"):
        if not hasattr(Config("x:y"), option):
            found.append(f"uvicorn.Config.{option}")
    # websockets' sans-I/O protocol: its parser generator is replaced after the handshake.
    protocol = ServerProtocol()
    if not inspect.isgenerator(getattr(protocol, "parser", None)) or not (
        inspect.isgeneratorfunction(getattr(Protocol, "parse", None))
    ):
        found.append("websockets Protocol.parser, a generator from Protocol.parse()")
    return found
