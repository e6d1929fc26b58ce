"""Errors a request can end with, as the JSON OpenAI's API gives: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class APIError(Exception):
    """An HTTP error answer: status code, message, OpenAI error type, the offending parameter, a short code."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    """400: something in the request is wrong."""
    return APIError(400, message, "invalid_request_error", param, code)


# The error types by status code, for errors raised by the framework (404, 405) or the server itself.
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}
