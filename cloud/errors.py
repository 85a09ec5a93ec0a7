"""The cloud's error tree. ``cloud.http`` is the one place that maps it to responses.

CloudError                    status  body code (docs/protocol.md error body)
├── Malformed                 400     malformed_request
├── Unauthenticated           401     unauthenticated | invalid_credentials | invalid_token
├── Forbidden                 403     forbidden
├── NotFound                  404     not_found | device_not_found | ticket_not_found | ...
├── Conflict                  409     email_taken | ticket_used | device_bound_... | ...
├── Gone                      410     ticket_expired
├── TooLarge                  413     payload_too_large
├── UnsupportedMediaType      415     unsupported_media_type
├── Invalid                   422     invalid_request | weak_password
├── Throttled                 429     rate_limited (+ Retry-After)
└── Unavailable               503     service_unavailable (+ Retry-After)

A database that is away is :func:`database_unavailable`: 503 too, never 500.
"""

import contextlib
from collections.abc import Iterator
from typing import ClassVar

from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError

from protocol.errors import ErrorCode


class CloudError(Exception):
    status: ClassVar[int] = 500
    default_code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code

    @property
    def headers(self) -> dict[str, str]:
        return {}


class Malformed(CloudError):
    status = 400
    default_code = ErrorCode.MALFORMED_REQUEST


class Unauthenticated(CloudError):
    status = 401
    default_code = ErrorCode.UNAUTHENTICATED

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="visionconnect"'}


class Forbidden(CloudError):
    status = 403
    default_code = ErrorCode.FORBIDDEN


class NotFound(CloudError):
    status = 404
    default_code = ErrorCode.NOT_FOUND


class Conflict(CloudError):
    status = 409
    default_code = ErrorCode.EMAIL_TAKEN


class Gone(CloudError):
    status = 410
    default_code = ErrorCode.TICKET_EXPIRED


class TooLarge(CloudError):
    status = 413
    default_code = ErrorCode.TOO_LARGE


class UnsupportedMediaType(CloudError):
    status = 415
    default_code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class Invalid(CloudError):
    status = 422
    default_code = ErrorCode.INVALID_REQUEST


class _RetryLater(CloudError):
    def __init__(self, message: str, retry_after_s: int, code: ErrorCode | None = None) -> None:
        super().__init__(message, code)
        self.retry_after_s = max(1, retry_after_s)

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Throttled(_RetryLater):
    status = 429
    default_code = ErrorCode.RATE_LIMITED


class Unavailable(_RetryLater):
    status = 503
    default_code = ErrorCode.UNAVAILABLE


DATABASE_RETRY_AFTER_S = 3


def database_unavailable(exc: BaseException) -> Unavailable | None:
    """The 503 for a database error that means the database is away or too slow now
    (network errors, timeouts, retryable errors: try again later); None for one that is a
    mistake of the query (a duplicate key, a bad update), which stays a 500."""
    transient = isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError) or (
        isinstance(exc, PyMongoError)
        and (
            exc.timeout
            or any(
                exc.has_error_label(label)
                for label in ("RetryableWriteError", "TransientTransactionError", "NetworkError")
            )
        )
    )
    if not transient:
        return None
    return Unavailable("the database is unavailable; try again shortly", DATABASE_RETRY_AFTER_S)


@contextlib.contextmanager
def outage_unavailable() -> Iterator[None]:
    """Raise a database outage inside the block as :class:`Unavailable` (where no HTTP
    exception handler maps it: the signaling edge closes a hello then with 1013)."""
    try:
        yield
    except PyMongoError as exc:
        down = database_unavailable(exc)
        if down is None:
            raise
        raise down from exc
