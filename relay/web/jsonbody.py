"""JSON from clients, with size and nesting depth checked before the parser runs.

Python's parser recurses once per nesting level: a 1 MB body of `[[[[...` raises
RecursionError deep inside it (a 500 if uncaught), and a payload that does parse at some
hundreds of levels makes every later json.dumps of it recurse as deep. No message of any
client nests more than a few levels, so bodies nested deeper than MAX_DEPTH are refused
by a scan that runs at C speed (bytes methods only, no Python loop per byte).

The parser also builds a Python list or dict per container, at a hundred times the cost per
byte of a command of strings: a 1 MB body of `[[],[],...` or of rows nested 31 deep holds the
reactor for a few hundred milliseconds. No client's message has more than a handful of
arrays and objects, so the scan refuses bodies with more than MAX_CONTAINERS as well.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32
# Arrays and objects in one body, at most (a Zax command has two or three).
MAX_CONTAINERS = 1024

_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
# [ and { open, ] and } close: the kind of bracket only matters to the parser.
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")


class JSONBodyError(ValueError):
    """The body is too large, nested too deep, or not JSON."""


def nesting_ok(data: bytes, max_depth: int = MAX_DEPTH,
               max_containers: int = MAX_CONTAINERS) -> bool:
    """Whether data's brackets outside strings nest at most max_depth deep (and, if they
    nest less, balance) and open at most max_containers arrays and objects. Exact for valid
    JSON; for anything else, exact up to the first byte the parser would refuse, so the
    parser never recurses deeper than max_depth nor builds more than max_containers."""
    # Escapes first: `\\` stands for a backslash, then `\"` for a quote inside a string;
    # what remains of `"` delimits strings, so every other piece is outside them.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[0::2])
    brackets = outside.translate(_TO_PARENS, _NOT_BRACKETS)
    if b"(" * (max_depth + 1) in brackets:
        return False  # the usual attack, found in one pass
    if brackets.count(b"(") > max_containers:
        return False  # and so the passes below run over a few thousand bytes at most
    # Each pass removes the innermost pairs, so balanced brackets of depth d are gone
    # after d passes.
    for _ in range(max_depth):
        if not brackets:
            return True
        brackets = brackets.replace(b"()", b"")
    return not brackets


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: stored, they would break every client that reads them.
    raise JSONBodyError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 is JSON, but Python reads it as inf, which json.dumps writes back as Infinity.
    value = float(text)
    if math.isinf(value):
        raise JSONBodyError("a number beyond a float's range")
    return value


def parse_json(data: bytes, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in data (UTF-8), or JSONBodyError if it is longer than max_bytes,
    nests deeper than max_depth, has more than MAX_CONTAINERS arrays and objects, or does
    not parse."""
    if len(data) > max_bytes:
        raise JSONBodyError(f"JSON longer than {max_bytes} bytes")
    if not nesting_ok(data, max_depth):
        raise JSONBodyError(f"JSON nested deeper than {max_depth} levels, with more than "
                            f"{MAX_CONTAINERS} arrays and objects, or unbalanced")
    try:
        # UTF-8 only (json.loads would also take UTF-16 and UTF-32 bytes, where a quote or
        # a bracket byte may be half of another character and the scan would not hold).
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant,
                          parse_float=_finite_float)
    except JSONBodyError:
        raise
    except (ValueError, RecursionError) as e:
        # UnicodeDecodeError is a ValueError; RecursionError cannot happen after the scan
        # but must never become a 500 if it did.
        raise JSONBodyError(f"not JSON: {type(e).__name__}") from None
