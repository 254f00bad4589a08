"""Client JSON, bounded: how many values a body may become (counted before parsing), how deep it may nest,
and which strings and numbers may pass on to an engine (checked after parsing).

``json.loads`` turns 3 bytes (``{},``) into a 64-byte dict plus a list slot: 10 MB of them cost +155 MB. Every
JSON value after the first follows a ``,``, ``:`` or ``[`` byte, so counting those bytes (one C pass,
~0.5 ms per MB) bounds the objects a body can become before any is built. Base64 audio holds none of them, so a
body of four 25 MiB clips counts a few dozen.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from server.errors import InvalidRequest, PayloadTooLarge

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays (tool schemas need ~10; Python's parser dies near 1000)."""

_SEPARATORS = b",:["
_KEEP_SEPARATORS = bytes(sorted(set(range(256)) - set(_SEPARATORS)))
_CHUNK = 4 * 1024 * 1024
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")

Path = tuple[str | int, ...]


def max_values(text_limit: int) -> int:
    """JSON values any body may hold: one per 4 bytes of the text limit (2 MiB → 524,288)."""
    return text_limit // 4


def check_value_count(raw: bytes, text_limit: int) -> None:
    """413 before parsing when ``raw`` could hold more JSON values than ``max_values(text_limit)``."""
    cap = max_values(text_limit)
    if len(raw) <= cap:  # fewer bytes than the cap: cannot hold more separators
        return
    seen = 0
    for start in range(0, len(raw), _CHUNK):
        seen += len(raw[start : start + _CHUNK].translate(None, _KEEP_SEPARATORS))
        if seen >= cap:
            raise PayloadTooLarge(f"request JSON holds more than {cap} values", code="too_many_json_values")


def loads(raw: bytes) -> Any:
    """``json.loads`` with every way it fails on client bytes mapped to a 400."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidRequest(
            f"request JSON is nested more than {MAX_DEPTH} levels deep", code="json_too_deep"
        ) from None
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid UTF-8", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc.msg} at position {exc.pos}", code="invalid_json"
        ) from None
    except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits
        raise InvalidRequest("request JSON holds a number too large to parse", code="invalid_json") from None


def check_tree(value: Any) -> None:
    """Walk a parsed body (iteratively): nesting within ``MAX_DEPTH``, no lone surrogate (``"\\ud800"``: no
    UTF-8 for it, the engine could not be sent it) in any string or key, only finite numbers. 400 naming the
    path otherwise."""
    stack: list[tuple[Any, int, Path]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(
                f"request JSON is nested more than {MAX_DEPTH} levels deep",
                param=render_path(path),
                code="json_too_deep",
            )
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(key, str) and not key.isascii():
                _check_text(key, path, "a key")
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1, (*path, key)))
            elif isinstance(child, str):
                if not child.isascii():
                    _check_text(child, (*path, key), "a string")
            elif isinstance(child, float) and not math.isfinite(child):
                raise InvalidRequest("numbers must be finite", param=render_path((*path, key)), code="invalid_number")


def check_root(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    check_tree(value)
    return value


def _check_text(text: str, path: Path, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"{what} holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid Unicode",
            param=render_path(path),
            code="invalid_unicode",
        ) from None


def render_path(path: Path, prefix: str = "") -> str | None:
    """``("messages", 0, "content")`` → ``messages[0].content`` (after ``prefix``); client keys that are not plain
    names are shown escaped and cut, so an error never echoes megabytes or unencodable text."""
    out = prefix
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part[:32])}]"
    return out or None
