"""Signaling: the hub that routes sessions, the bus between instances, the WebSocket edges."""
