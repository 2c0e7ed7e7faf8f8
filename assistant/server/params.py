"""Typed reads of a JSON request body: a wrong type names the field and what it should be."""

from __future__ import annotations

import json
from typing import Any

from assistant.server.errors import ApiError

MAX_STOPS = 16


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {getattr(e, 'msg', str(e))}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def _type_name(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }.get(type(v), type(v).__name__)


class Body:
    """A JSON object whose getters check types; ``where`` prefixes field names (``options.``)."""

    def __init__(self, data: dict[str, Any], where: str = ""):
        self.data = data
        self.where = where

    def _bad(self, key: str, want: str, value: Any) -> ApiError:
        name = self.where + key
        return ApiError(400, f"'{name}' must be {want}, not {_type_name(value)}", param=name)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        v = self.data.get(key)
        if v is None:
            if required:
                raise ApiError(400, f"'{self.where + key}' is required", param=self.where + key)
            return default
        if not isinstance(v, str):
            raise self._bad(key, "a string", v)
        return v

    def integer(self, key: str, default: int | None, *, lo: int | None = None, hi: int | None = None) -> int | None:
        v = self.data.get(key)
        if v is None:
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._bad(key, "an integer", v)
        self._range(key, v, lo, hi)
        return v

    def number(
        self, key: str, default: float | None, *, lo: float | None = None, hi: float | None = None
    ) -> float | None:
        v = self.data.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self._bad(key, "a number", v)
        self._range(key, v, lo, hi)
        return float(v)

    def _range(self, key: str, v: float, lo: float | None, hi: float | None) -> None:
        name = self.where + key
        if lo is not None and v < lo:
            raise ApiError(400, f"'{name}' must be at least {lo}, not {v}", param=name)
        if hi is not None and v > hi:
            raise ApiError(400, f"'{name}' must be at most {hi}, not {v}", param=name)

    def flag(self, key: str, default: bool) -> bool:
        v = self.data.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def object(self, key: str) -> Body:
        v = self.data.get(key)
        if v is None:
            return Body({}, self.where + key + ".")
        if not isinstance(v, dict):
            raise self._bad(key, "an object", v)
        return Body(v, self.where + key + ".")

    def array(self, key: str) -> list[Any]:
        v = self.data.get(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise self._bad(key, "an array", v)
        return v

    def stops(self, key: str = "stop") -> tuple[str, ...]:
        v = self.data.get(key)
        if v is None:
            return ()
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise self._bad(key, "a string or an array of strings", v)
        if len(items) > MAX_STOPS:
            raise ApiError(
                400, f"'{self.where + key}' has {len(items)} entries; at most {MAX_STOPS}", param=self.where + key
            )
        return tuple(s for s in items if s)
