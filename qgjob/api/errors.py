"""API errors: ``{"error": code, "message": text, "detail": [...]}``."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from eventstore.errors import QgjobError


class ApiError(QgjobError):
    """The request could not be served."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str | None = None, *, detail: list[Any] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.detail = detail or []
        self.extra = extra

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.code, "message": str(self), "detail": self.detail}
        body.update(self.extra)
        return JSONResponse(body, status_code=self.status)


class ValidationFailed(ApiError):
    """The request body is not valid."""

    status = 422
    code = "validation_error"


class InvalidJson(ApiError):
    """The request body is not valid JSON."""

    status = 400
    code = "invalid_json"


class BodyTooLarge(ApiError):
    """The request body is too large."""

    status = 413
    code = "too_large"


class Unauthorized(ApiError):
    """A valid bearer token is required: send 'Authorization: Bearer <token>'."""

    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """This token may not do that."""

    status = 403
    code = "forbidden"


class NotFound(ApiError):
    """Not found."""

    status = 404
    code = "not_found"


class Conflict(ApiError):
    """The request conflicts with the current state."""

    status = 409
    code = "conflict"


class QuotaExceeded(ApiError):
    """The organisation's queue quota is full."""

    status = 429
    code = "quota_exceeded"


class Unavailable(ApiError):
    """A backing service is unavailable; try again."""

    status = 503
    code = "unavailable"
