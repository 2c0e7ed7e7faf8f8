"""Errors in each API's own shape: OpenAI, Ollama and llama.cpp clients each parse their own."""

from __future__ import annotations

import json
from typing import Any

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    501: "not_supported_error",
    503: "server_overloaded",
    500: "server_error",
}


class ApiError(Exception):
    """A request the server refuses, with the HTTP status and (for OpenAI) the offending parameter."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def family_of(path: str) -> str:
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/"):
        return "ollama"
    return "llamacpp"


def error_body(
    family: str, status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if family == "openai":
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}
    if family == "ollama":
        return {"error": message}
    return {"error": {"code": status, "message": message, "type": kind}}


def error_bytes(family: str, err: ApiError) -> bytes:
    return json.dumps(error_body(family, err.status, err.message, err.param, err.code)).encode()
