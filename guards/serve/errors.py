"""The client-error exception of the guarded server (an HTTP status and a one-line reason)."""

from __future__ import annotations


class RequestError(Exception):
    """A client error: HTTP status, one-line reason, OpenAI error type/code."""

    def __init__(self, status: int, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        """OpenAI's error body."""
        kind = {401: "authentication_error", 404: "not_found_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
