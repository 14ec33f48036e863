"""Code phrases (word list, normalising, typo hints) and drop codes (entropy, derivation)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.client import codes
from relay.client.codes import BadCode
from relay.client.live.pake import channel_of


def test_word_list_is_clean_and_big_enough():
    assert len(set(codes.WORDS)) == len(codes.WORDS)
    assert all(re.fullmatch(r"[a-z]{2,8}", w) for w in codes.WORDS)
    # Three words: over 28 bits against a guesser who gets one try per code.
    assert codes.CODE_WORDS * math.log2(len(codes.WORDS)) > 28


def test_code_phrases_round_trip_and_suit_the_pake():
    code = codes.make_code("abcd2345")
    channel, *words = code.split("-")
    assert channel == "abcd2345" and len(words) == 3 and set(words) <= set(codes.WORDS)
    assert codes.check_code(code) == code
    # Case, surrounding blanks and spaces instead of hyphens are forgiven.
    assert codes.check_code(f"  {code.upper().replace('-', ' ')}\n") == code
    assert channel_of(code) == channel
    assert len({codes.make_code("abcd2345") for _ in range(50)}) == 50


@pytest.mark.parametrize("text,hint", [
    ("abcd-appel-zebra-oak", "did you mean apple"),
    ("abcd-apple-zebra", "looks like"),
    ("-apple-zebra-oak", "looks like"),
    ("ab\x1bcd-apple-zebra-oak", "looks like"),
    ("abcd-apple-zebra-\x1b[2J", "is not a code word"),
])
def test_malformed_codes_are_refused_before_any_network(text, hint):
    with pytest.raises(BadCode, match=re.escape(hint)) as caught:
        codes.check_code(text)
    assert "\x1b" not in str(caught.value)


def test_drop_codes_have_high_entropy_and_forgive_lookalikes():
    code = codes.make_drop_code()
    assert re.fullmatch(r"drop(-[0-9a-hjkmnp-tv-z]{5}){5}", code)
    assert 25 * math.log2(32) >= 125
    assert codes.is_drop_code(code.upper()) and not codes.is_drop_code("abcd-apple-zebra-oak")
    assert codes.check_drop_code(code.upper().replace("-", " ")) == code
    fixed = "drop-" + "-".join(["0o1il"] * 5)
    assert codes.check_drop_code(fixed) == "drop-" + "-".join(["00111"] * 5)
    for bad in ["drop-abc", "drop-" + "-".join(["uuuuu"] * 5), "abcde-" * 5]:
        with pytest.raises(BadCode):
            codes.check_drop_code(bad)


def test_drop_identities_are_deterministic_and_separate():
    code = codes.make_drop_code()
    sender, recipient = codes.drop_identities(code)
    again = codes.drop_identities(code.upper())
    assert bytes(sender) == bytes(again[0]) and bytes(recipient) == bytes(again[1])
    assert bytes(sender) != bytes(recipient)
    other = codes.drop_identities(codes.make_drop_code())
    assert bytes(other[0]) != bytes(sender) and bytes(other[1]) != bytes(recipient)


@given(st.text(max_size=200))
def test_any_typed_text_is_a_code_or_bad_code(text):
    for check in (codes.check_code, codes.check_drop_code):
        try:
            result = check(text)
        except BadCode as e:
            assert all(c.isprintable() for c in str(e))
        else:
            assert result == codes.normalise(result)
