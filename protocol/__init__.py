"""The VisionConnect wire contract shared by the cloud, relays, cameras and apps.

Pure: imports pydantic and the standard library, nothing of the project's other packages.
docs/protocol.md is the human-readable summary; these models are its executable form.
"""

PROTOCOL_VERSION = 1
