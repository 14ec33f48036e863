"""The JSON pre-scan: depth counted outside strings, exact for any JSON value, never a
Python recursion, and the parser's own errors all one JSONBodyError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.web.jsonbody import MAX_CONTAINERS, MAX_DEPTH, JSONBodyError, nesting_ok, parse_json


def depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


# Strings full of what the scan must see through: quotes, backslashes, brackets.
tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\/ab\u00e9\u2028\U0001f600'), max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False) | tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner,
                                                                 max_size=3),
    max_leaves=40)


@given(value=json_values, limit=st.integers(min_value=0, max_value=12),
       ensure_ascii=st.booleans())
def test_scan_is_exact_on_json(value, limit, ensure_ascii):
    text = json.dumps(value, ensure_ascii=ensure_ascii).encode()
    assert nesting_ok(text, limit) == (depth(value) <= limit)
    if depth(value) <= MAX_DEPTH:
        assert parse_json(text, len(text)) == value


@given(data=st.binary(max_size=200) | st.text(alphabet='[]{}"\\,:1 ', max_size=200).map(
    str.encode))
def test_garbage_is_a_clean_error(data):
    try:
        parse_json(data, 1000, max_depth=4)
    except JSONBodyError:
        pass


@pytest.mark.parametrize("body", [
    b"[" * 50_000, b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"[" * 33 + b"]" * 33, b'["\\\\"' + b"[" * 40 + b"]" * 40 + b"]",
])
def test_deep_nesting_is_refused_before_parsing(body):
    with pytest.raises(JSONBodyError, match="nested deeper"):
        parse_json(body, 10**6)


@pytest.mark.parametrize("body", [
    b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"\xff", b'"\xed\xa0\x80"',
    '[1]'.encode("utf-16"), b"1" * 5000, b"[1,]", b"",
])
def test_not_json_is_refused(body):
    with pytest.raises(JSONBodyError):
        parse_json(body, 10**6)


def test_size_is_checked_first():
    with pytest.raises(JSONBodyError, match="longer than"):
        parse_json(b"[" * 100, 99)
    assert parse_json(b'["' + b"[" * 40 + b'"]', 100) == ["[" * 40]


@pytest.mark.parametrize("body", [
    # Many small containers: the parser builds a Python list or dict for each, at a hundred
    # times the cost per byte of a normal command (no client sends more than a few).
    b"[" + b"[]," * 300_000 + b"[]]",
    b"[" + b",".join([b"[" * 30 + b"]" * 30] * 16_000) + b"]",
    b'{"a":' + b"{}," * 2000 + b"{}}",
])
def test_many_containers_are_refused_before_parsing(body):
    assert not nesting_ok(body)
    with pytest.raises(JSONBodyError, match="arrays and objects"):
        parse_json(body, 10**6)


def test_containers_up_to_the_cap_parse():
    body = b"[" + b"{}," * (MAX_CONTAINERS - 2) + b"{}]"
    assert len(parse_json(body, 10**6)) == MAX_CONTAINERS - 1
    # Brackets inside strings are text, not containers.
    assert parse_json(b'["' + b"[]" * 5000 + b'"]', 10**6) == ["[]" * 5000]


@pytest.mark.parametrize("body", [b"1e400", b"[-1e400]", b'{"wait": 1E+999}'])
def test_numbers_beyond_a_float_are_refused(body):
    # Python reads them as inf, which json.dumps writes back as Infinity: not JSON.
    with pytest.raises(JSONBodyError):
        parse_json(body, 10**6)
