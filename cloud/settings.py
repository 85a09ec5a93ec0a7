"""One Settings object, read from the environment (and a ``.env`` file when present).

Names are docs/design.md's. Development defaults let ``make run`` work with nothing installed;
production (``ENVIRONMENT=production``) refuses to start on a default or missing secret.
"""

import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

MIN_SECRET_BYTES = 32
MAX_ONBOARDING_TTL_S = 600


class SettingsError(ValueError):
    """The environment does not describe a runnable configuration."""


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, not {raw!r}") from exc


def _floats(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = _split(env.get(name))
    if not raw:
        return default
    try:
        return tuple(float(part) for part in raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a comma list of seconds, not {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    public_url: str = "http://127.0.0.1:8000"
    environment: str = "development"
    data_dir: Path = Path("var")
    mongodb_url: str | None = None
    database_name: str = "visionconnect"
    # Database operations one instance runs at once (cloud/db.py); more wait in the instance.
    database_pool: int = 16
    redis_url: str | None = None
    jwt_secret: str = field(default="", repr=False)
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str = field(default="", repr=False)
    turn_ttl_s: int = 3600
    relay_secret: str = field(default="", repr=False)
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    onboarding_ttl_s: int = MAX_ONBOARDING_TTL_S
    onboarding_tickets_per_hour: int = 30
    # Login throttling: failures per account, attempts per client address, per window.
    login_window_s: int = 900
    login_max_failures_per_account: int = 5
    login_max_attempts_per_address: int = 100
    # Activation: failed attempts per client address per window.
    activation_max_failures_per_address: int = 20
    trusted_proxies: tuple[str, ...] = ()
    # A camera is online while its connection refreshes its presence; an instance that dies
    # without clearing it is noticed when it expires.
    presence_ttl_s: int = 60
    event_retention_days: int = 7
    # Signaling limits (docs/protocol.md, "Limits").
    sdp_per_s: int = 5
    ice_per_s: int = 20
    viewers_per_camera: int = 10
    embedded_db_cache: str = "256M"
    # Media (cloud/media/): defaults per owner; a user's own fields override the first two.
    media_retention_days: int = 30
    media_quota_bytes: int = 10 * 1024**3
    media_clip_max_bytes: int = 512 * 1024**2
    media_upload_max_bytes: int = 2 * 1024**3
    media_sweep_interval_s: int = 300
    media_url_ttl_s: int = 300
    media_url_secret: str = field(default="", repr=False)
    # Notifications (cloud/notify/): Web Push keys, the outbox's retries, webhook addresses.
    vapid_private_key: str = field(default="", repr=False)
    vapid_subject: str = ""
    notify_retry_schedule_s: tuple[float, ...] = (1, 5, 30, 120, 600, 1800, 3600)
    notify_retry_for_s: int = 86_400
    notify_cooldown_s: int = 30
    notify_allow_loopback: bool = False
    notify_push_ttl_s: int = 86_400
    notify_image_ttl_s: int = 86_400
    # GET /metrics (cloud/metrics.py): behind a bearer token, or on a port of its own.
    metrics_token: str = field(default="", repr=False)
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        dotenv: bool = True,
        default_public_url: str = "http://127.0.0.1:8000",
    ) -> "Settings":
        env: dict[str, str] = {}
        if dotenv and Path(".env").is_file():
            env.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
        env.update(os.environ if environ is None else environ)
        settings = cls(
            # Render sets RENDER_EXTERNAL_URL (https://<service>.onrender.com) on web services.
            public_url=(
                env.get("PUBLIC_URL") or env.get("RENDER_EXTERNAL_URL") or default_public_url
            ).rstrip("/"),
            environment=env.get("ENVIRONMENT", cls.environment),
            data_dir=Path(env.get("DATA_DIR", str(cls.data_dir))),
            mongodb_url=env.get("MONGODB_URL") or None,
            database_name=env.get("MONGODB_DATABASE", cls.database_name),
            database_pool=_int(env, "MONGODB_POOL_SIZE", cls.database_pool),
            redis_url=env.get("REDIS_URL") or None,
            jwt_secret=env.get("JWT_SECRET", ""),
            stun_urls=_split(env.get("STUN_URLS")),
            turn_urls=_split(env.get("TURN_URLS")),
            turn_secret=env.get("TURN_SECRET", ""),
            turn_ttl_s=_int(env, "TURN_TTL_S", cls.turn_ttl_s),
            relay_secret=env.get("RELAY_SECRET", ""),
            onboarding_ttl_s=_int(env, "ONBOARDING_TTL_S", cls.onboarding_ttl_s),
            onboarding_tickets_per_hour=_int(
                env, "ONBOARDING_TICKETS_PER_HOUR", cls.onboarding_tickets_per_hour
            ),
            login_max_failures_per_account=_int(
                env, "LOGIN_MAX_FAILURES_PER_ACCOUNT", cls.login_max_failures_per_account
            ),
            login_max_attempts_per_address=_int(
                env, "LOGIN_MAX_ATTEMPTS_PER_ADDRESS", cls.login_max_attempts_per_address
            ),
            trusted_proxies=_split(env.get("TRUSTED_PROXIES")),
            presence_ttl_s=_int(env, "PRESENCE_TTL_S", cls.presence_ttl_s),
            event_retention_days=_int(env, "EVENT_RETENTION_DAYS", cls.event_retention_days),
            sdp_per_s=_int(env, "SDP_PER_S", cls.sdp_per_s),
            ice_per_s=_int(env, "ICE_PER_S", cls.ice_per_s),
            viewers_per_camera=_int(env, "VIEWERS_PER_CAMERA", cls.viewers_per_camera),
            media_retention_days=_int(env, "MEDIA_RETENTION_DAYS", cls.media_retention_days),
            media_quota_bytes=_int(env, "MEDIA_QUOTA_BYTES", cls.media_quota_bytes),
            media_clip_max_bytes=_int(env, "MEDIA_CLIP_MAX_BYTES", cls.media_clip_max_bytes),
            media_upload_max_bytes=_int(env, "MEDIA_UPLOAD_MAX_BYTES", cls.media_upload_max_bytes),
            media_sweep_interval_s=_int(env, "MEDIA_SWEEP_INTERVAL_S", cls.media_sweep_interval_s),
            media_url_ttl_s=_int(env, "MEDIA_URL_TTL_S", cls.media_url_ttl_s),
            media_url_secret=env.get("MEDIA_URL_SECRET", ""),
            vapid_private_key=env.get("VAPID_PRIVATE_KEY", ""),
            vapid_subject=env.get("VAPID_SUBJECT", ""),
            notify_retry_schedule_s=_floats(
                env, "NOTIFY_RETRY_SCHEDULE_S", cls.notify_retry_schedule_s
            ),
            notify_retry_for_s=_int(env, "NOTIFY_RETRY_FOR_S", cls.notify_retry_for_s),
            notify_cooldown_s=_int(env, "NOTIFY_COOLDOWN_S", cls.notify_cooldown_s),
            notify_allow_loopback=env.get("NOTIFY_ALLOW_LOOPBACK", "") in ("1", "true", "yes"),
            notify_push_ttl_s=_int(env, "NOTIFY_PUSH_TTL_S", cls.notify_push_ttl_s),
            notify_image_ttl_s=_int(env, "NOTIFY_IMAGE_TTL_S", cls.notify_image_ttl_s),
            metrics_token=env.get("METRICS_TOKEN", ""),
            metrics_port=_int(env, "METRICS_PORT", cls.metrics_port),
            metrics_host=env.get("METRICS_HOST") or cls.metrics_host,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.environment not in ("development", "production"):
            raise SettingsError("ENVIRONMENT must be 'development' or 'production'")
        if not self.public_url.startswith(("http://", "https://")):
            raise SettingsError("PUBLIC_URL must be an http:// or https:// URL")
        if not 60 <= self.onboarding_ttl_s <= MAX_ONBOARDING_TTL_S:
            raise SettingsError("ONBOARDING_TTL_S must be between 60 and 600 seconds")
        if not 1 <= self.event_retention_days <= 3650:
            raise SettingsError("EVENT_RETENTION_DAYS must be between 1 and 3650")
        if not 1 <= self.database_pool <= 1000:
            raise SettingsError("MONGODB_POOL_SIZE must be between 1 and 1000")
        if not 3 <= self.presence_ttl_s <= 600:
            raise SettingsError("PRESENCE_TTL_S must be between 3 and 600 seconds")
        if min(self.sdp_per_s, self.ice_per_s, self.viewers_per_camera) < 1:
            raise SettingsError("SDP_PER_S, ICE_PER_S and VIEWERS_PER_CAMERA must be at least 1")
        if not 1 <= self.media_retention_days <= 3650:
            raise SettingsError("MEDIA_RETENTION_DAYS must be between 1 and 3650")
        if min(self.media_quota_bytes, self.media_clip_max_bytes, self.media_upload_max_bytes) < 1:
            raise SettingsError(
                "MEDIA_QUOTA_BYTES, MEDIA_CLIP_MAX_BYTES and MEDIA_UPLOAD_MAX_BYTES must be > 0"
            )
        if not 1 <= self.media_sweep_interval_s <= 86_400:
            raise SettingsError("MEDIA_SWEEP_INTERVAL_S must be between 1 and 86400 seconds")
        if not 10 <= self.media_url_ttl_s <= 3600:
            raise SettingsError("MEDIA_URL_TTL_S must be between 10 and 3600 seconds")
        if not self.notify_retry_schedule_s or not all(
            0 < s <= 86_400 for s in self.notify_retry_schedule_s
        ):
            raise SettingsError("NOTIFY_RETRY_SCHEDULE_S must be seconds, each in (0, 86400]")
        if not 1 <= self.notify_retry_for_s <= 7 * 86_400:
            raise SettingsError("NOTIFY_RETRY_FOR_S must be between 1 and 604800 seconds")
        if not 0 <= self.notify_cooldown_s <= 86_400:
            raise SettingsError("NOTIFY_COOLDOWN_S must be between 0 and 86400 seconds")
        ttls = (self.notify_push_ttl_s, self.notify_image_ttl_s)
        if not all(60 <= ttl <= 7 * 86_400 for ttl in ttls):
            raise SettingsError("NOTIFY_PUSH_TTL_S and NOTIFY_IMAGE_TTL_S: 60 to 604800 seconds")
        if self.vapid_subject and not self.vapid_subject.startswith(("mailto:", "https://")):
            raise SettingsError("VAPID_SUBJECT must be a mailto: or https:// URL")
        if self.production:
            if len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
                raise SettingsError(
                    f"JWT_SECRET must be set to at least {MIN_SECRET_BYTES} bytes in production"
                )
            if not self.mongodb_url:
                raise SettingsError("MONGODB_URL is required in production")
            if not self.public_url.startswith("https://"):
                raise SettingsError("PUBLIC_URL must be https:// in production")

    def resolved_media_url_secret(self) -> bytes:
        """The HMAC key of signed media URLs: MEDIA_URL_SECRET, else derived from the JWT
        secret (a key of its own, so a media token can never pass as an access token)."""
        if self.media_url_secret:
            return self.media_url_secret.encode()
        return hmac.new(self.resolved_jwt_secret().encode(), b"media-url", "sha256").digest()

    def resolved_jwt_secret(self) -> str:
        """The JWT secret; in development, generated once and kept in ``DATA_DIR``."""
        if self.jwt_secret:
            return self.jwt_secret
        if not 1 <= self.event_retention_days <= 3650:
            raise SettingsError("EVENT_RETENTION_DAYS must be between 1 and 3650")
        if not 3 <= self.presence_ttl_s <= 600:
            raise SettingsError("PRESENCE_TTL_S must be between 3 and 600 seconds")
        if self.production:
            raise SettingsError("JWT_SECRET is required in production")
        path = self.data_dir / "jwt-secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process of this deployment wrote it first
            else:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(48))
        return path.read_text().strip()
