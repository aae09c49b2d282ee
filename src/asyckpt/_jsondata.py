"""Handler records as JSON data that always encodes to valid JSON.

A handler's record is MessagePack, which can hold what JSON cannot: NaN and infinities,
map keys that are not strings (numbers, arrays, nil), binary strings, extension types.
``json.dumps`` would print ``NaN`` or ``Infinity`` (not JSON: most parsers refuse them)
or fail on an array key.  So the JSON export states one replacement for each (docs/images.md,
"Values JSON has no form for"):

- a float that is not finite becomes the string ``"NaN"``, ``"Infinity"`` or
  ``"-Infinity"`` (the spellings of ECMAScript and of protobuf's JSON mapping);
- binary becomes base64 text (as msgspec's JSON encoder writes it);
- a map key that is a number becomes its decimal text, a binary key its base64; any other
  key (array, nil, boolean) becomes its own JSON text (``[1,2]``, ``null``, ``true``);
- a MessagePack extension becomes ``{"ext": TYPE, "data": BASE64}``; any other object
  JSON has no form for, its ``repr``.

Pure; no I/O.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

__all__ = ["NON_FINITE", "json_data"]

NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
"""The text of each infinity; NaN (which no dict can key) is ``"NaN"``."""


def _other(value: Any) -> Any:
    if isinstance(value, msgspec.msgpack.Ext):
        data: str = msgspec.to_builtins(bytes(value.data))
        return {"ext": value.code, "data": data}
    return repr(value)


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else NON_FINITE[value]


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        converted = _float(key)
        return converted if isinstance(converted, str) else repr(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    if isinstance(key, bytes | bytearray | memoryview):
        text: str = msgspec.to_builtins(bytes(key))
        return text
    return json.dumps(_walk(key), separators=(",", ":"), allow_nan=False)


def _walk(value: Any) -> Any:
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, dict):
        return {_key(k): _walk(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v) for v in value]
    if value is None or isinstance(value, str | int):
        return value
    # bytes, datetimes, Structs...: as msgspec has them in JSON; extensions as stated.
    return _walk(msgspec.to_builtins(value, enc_hook=_other, str_keys=True))


def json_data(value: Any, raw: bytes | None = None) -> Any:
    """``value`` as JSON data (dicts, lists, str, int, finite float, bool, None), with the
    replacements above.  ``raw``, the MessagePack ``value`` was decoded from, lets the
    common case skip the walk: without the type bytes of float32 and float64 (0xca,
    0xcb) anywhere in it, it holds no float."""
    if raw is not None and b"\xca" not in raw and b"\xcb" not in raw:
        try:
            return msgspec.to_builtins(value, enc_hook=_other, str_keys=True)
        except TypeError:  # a key with no str form (an array, nil, a boolean)
            pass
    return _walk(value)
