"""Error codes of the public contract and the one exception the codecs raise.

Every error a client can see is ``{"error": {"code": <ErrorCode>, "message": <sentence>}}``.
The codes are stable identifiers for programs; the messages are for people.
"""

from enum import StrEnum


class ErrorCode(StrEnum):
    # 400
    MALFORMED_REQUEST = "malformed_request"
    # 401
    UNAUTHENTICATED = "unauthenticated"
    INVALID_CREDENTIALS = "invalid_credentials"
    INVALID_TOKEN = "invalid_token"
    # 403
    FORBIDDEN = "forbidden"
    # 404
    NOT_FOUND = "not_found"
    DEVICE_NOT_FOUND = "device_not_found"
    TICKET_NOT_FOUND = "ticket_not_found"
    USER_NOT_FOUND = "user_not_found"
    SHARE_NOT_FOUND = "share_not_found"
    # 405
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # 409
    EMAIL_TAKEN = "email_taken"
    TICKET_USED = "ticket_used"
    DEVICE_BOUND = "device_bound_to_another_owner"
    ALREADY_SHARED = "already_shared"
    CLIP_FINISHED = "clip_finished"
    # 410
    TICKET_EXPIRED = "ticket_expired"
    # 413
    TOO_LARGE = "payload_too_large"
    MEDIA_QUOTA_EXCEEDED = "media_quota_exceeded"
    # 415
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    # 416
    RANGE_NOT_SATISFIABLE = "range_not_satisfiable"
    # 422
    INVALID_REQUEST = "invalid_request"
    WEAK_PASSWORD = "weak_password"
    INVALID_QR_PAYLOAD = "invalid_qr_payload"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_SESSION = "unknown_session"
    DEVICE_OFFLINE = "device_offline"
    # 429
    RATE_LIMITED = "rate_limited"
    # 500 / 503
    INTERNAL = "internal_error"
    UNAVAILABLE = "service_unavailable"


class ProtocolError(ValueError):
    """Input that does not follow the contract; ``code`` says which rule it broke."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
