"""The control plane's error tree and the one JSON error body every error uses.

    ApiError(status, code, message, problems)
    ├── NotFound            404 not_found        (also: another account's resource)
    ├── Conflict            409 conflict
    ├── Invalid             422 validation_failed  `problems`: [{path, message}]
    ├── Unauthorized        401 unauthorized
    ├── Forbidden           403 forbidden
    └── Throttled           429 throttled          `retry_after_s`

Body: {"error": {"status": 422, "code": "validation_failed", "message": "...",
"problems": [{"path": "body.region", "message": "..."}]}} — `problems` only on 422.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        problems: list[dict[str, str]] | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.problems is not None:
            error["problems"] = self.problems
        return {"error": error}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Invalid(ApiError):
    status, code = 422, "validation_failed"

    def __init__(self, problems: list[dict[str, str]], message: str | None = None) -> None:
        first = f"{problems[0]['path']}: {problems[0]['message']}" if problems else "invalid"
        super().__init__(message or f"request validation failed ({first})", problems=problems)


class Throttled(ApiError):
    status, code = 429, "throttled"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


def problem(path: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message}
