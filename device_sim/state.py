"""What a camera remembers after activation, in a file only its owner can read (0600).

The file holds the camera's private key: it is written atomically with mode 0600 from the
start (never world-readable, not even for an instant), and refused on load if anyone else
could read it. An agent bridging an IP camera also keeps the camera's video source there:
``source`` without its password (safe to show), ``source_password`` apart.
"""

import base64
import json
import os
import stat
import urllib.parse
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat


class StateError(Exception):
    """The state file is missing, unreadable, or too open."""


@dataclass(frozen=True)
class CameraState:
    cloud_url: str
    device_id: str
    device_uid: str
    device_name: str
    camera_model: str
    firmware_version: str
    signaling_url: str
    private_key: str  # raw Ed25519 seed, URL-safe base64
    source: str | None = None  # the video source, without its password
    source_password: str | None = None

    def with_source(self, location: str) -> "CameraState":
        """This state bridging ``location`` (its password kept apart from the URL)."""
        parts = urllib.parse.urlsplit(location)
        if parts.password is None:
            return replace(self, source=location, source_password=None)
        user = parts.username or ""
        netloc = f"{user}@{parts.netloc.rpartition('@')[2]}"
        password = urllib.parse.unquote(parts.password)
        return replace(
            self, source=parts._replace(netloc=netloc).geturl(), source_password=password
        )

    def source_url(self) -> str | None:
        """The video source to bridge, with its password, or ``None`` (synthetic)."""
        if self.source is None or self.source_password is None:
            return self.source
        parts = urllib.parse.urlsplit(self.source)
        user, _, host = parts.netloc.rpartition("@")
        secret = urllib.parse.quote(self.source_password, safe="")
        return parts._replace(netloc=f"{user}:{secret}@{host}").geturl()

    @property
    def key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(self.private_key))

    @staticmethod
    def encode_key(key: Ed25519PrivateKey) -> str:
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return base64.urlsafe_b64encode(raw).decode()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "CameraState":
        try:
            mode = path.stat().st_mode
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read camera state {path}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StateError(f"{path} is readable by others; chmod 600 it (it holds a private key)")
        try:
            return cls(**data)
        except TypeError as exc:
            raise StateError(f"{path} is not a camera state file") from exc
