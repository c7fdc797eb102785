"""Compact, byte-stable JSON text for message values and keys.

Why not json.dumps: DECIMAL values must come out as JSON numbers with every
digit (json.dumps cannot write a Decimal as a number), and keys are hash input
for shards, so the same value must always give the same bytes. Rules: no
whitespace, keys in insertion order, non-ASCII characters as UTF-8 (like
Maxwell), Decimal as its plain digits, floats as Python's shortest repr,
NaN and infinities refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from decimal import Decimal
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, Literal


class JsonTextError(ValueError):
    """A value has no JSON form."""


ObjectEncoder = Callable[[dict[str, Any]], str | None]

_encode_str: Callable[[str], str] = encode_basestring
_encode_str_ascii: Callable[[str], str] = encode_basestring_ascii


def _float_text(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        raise JsonTextError(f"{value!r} has no JSON form")
    return float.__repr__(value)


def _decimal_text(value: Decimal) -> str:
    """Plain digits, never an exponent: 0.00000000000000000001, not 1E-20."""
    text = str(value)
    if "E" in text or "N" in text or "I" in text:
        # Exponent form (tiny or huge values), or NaN/sNaN/Infinity.
        if not value.is_finite():
            raise JsonTextError(f"{value!r} has no JSON form")
        return value.__format__("f")
    return text


def encode(value: Any, ascii_only: bool = False) -> str:
    """The JSON text of a JSON-ready value."""
    enc_str = _encode_str_ascii if ascii_only else _encode_str
    t = type(value)
    if t is str:
        return enc_str(value)
    if t is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is float:
        return _float_text(value)
    if t is Decimal:
        return _decimal_text(value)
    if t is dict:
        return (
            "{"
            + ",".join(f"{enc_str(_key(k))}:{encode(v, ascii_only)}" for k, v in value.items())
            + "}"
        )
    if t is list or t is tuple:
        return "[" + ",".join(encode(v, ascii_only) for v in value) + "]"
    # Subclasses of the basic types (IntEnum, str subclasses) keep their base form.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, str):
        return enc_str(str.__str__(value))
    if isinstance(value, float):
        return _float_text(value)
    raise JsonTextError(f"{t.__name__} value {value!r} has no JSON form")


def _key(key: Any) -> str:
    if type(key) is not str:
        raise JsonTextError(f"JSON object key {key!r} is not a string")
    return str(key)


# --- compiled object encoders ------------------------------------------------------

ValueKind = Literal["int", "str", "decimal", "float", "any"]


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a plain JSON value")


# json's C encoder, made once (json.dumps makes one per call): no markers, no
# indent, compact separators, insertion order, NaN refused.
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encoder: Callable[[Any, int], Sequence[str]] | None = (
    _make_c_encoder(None, _refuse, encode_basestring, None, ":", ",", False, False, False)
    if _make_c_encoder is not None
    else None
)


def _encode_any(value: Any) -> str:
    # The C encoder gives the same text as `encode` for plain JSON values; it
    # refuses Decimal (binary JSON may hold one) and the generic path takes over.
    if _c_encoder is None:
        return encode(value)
    try:
        return "".join(_c_encoder(value, 0))
    except (TypeError, ValueError):
        return encode(value)


def compile_object_encoder(fields: Sequence[tuple[str, ValueKind]]) -> ObjectEncoder:
    """An encoder for dicts that have exactly these keys: it writes them in this
    order with a type-specific encoder per value, and returns None for any other
    dict (the caller then uses `encode`). Values of an unexpected type still go
    through `encode`, so the text is always what `encode` would write."""
    names: dict[str, Any] = {
        "_join": "".join,
        "_enc": encode,
        "_any": _encode_any,
        "_int": int.__repr__,
        "_int_t": int,
        "_str": _encode_str,
        "_str_t": str,
        "_dec": _decimal_text,
        "_dec_t": Decimal,
        "_flt": float.__repr__,
        "_flt_t": float,
    }
    pieces: list[str] = []
    reads: list[str] = []
    for index, (name, kind) in enumerate(fields):
        var = f"v{index}"
        reads.append(f"        {var} = d[{name!r}]")
        literal = ("{" if index == 0 else ",") + _encode_str(name) + ":"
        pieces.append(repr(literal))
        if kind == "any":
            pieces.append(f"_any({var})")
        else:
            short = {"int": "_int", "str": "_str", "decimal": "_dec", "float": "_flt"}[kind]
            # Non-finite numbers have no JSON form: they go to `_enc`, which refuses them.
            finite = {"float": f" and {var} - {var} == 0"}
            test = f"type({var}) is {short}_t{finite.get(kind, '')}"
            pieces.append(f"({short}({var}) if {test} else _enc({var}))")
    pieces.append(repr("}" if fields else "{}"))
    source = "\n".join(
        [
            "def encode_object(d):",
            f"    if len(d) != {len(fields)}:",
            "        return None",
            "    try:",
            *(reads or ["        pass"]),
            "    except KeyError:",
            "        return None",
            f"    return _join(({', '.join(pieces)},))",
        ]
    )
    exec(compile(source, f"<object encoder {len(fields)} fields>", "exec"), names)
    encoder: ObjectEncoder = names["encode_object"]
    return encoder
