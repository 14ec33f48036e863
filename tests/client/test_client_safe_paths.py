"""The receiver's path rules, with hypothesis: no accepted name can leave the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.client.errors import UnsafePathError
from relay.client.safe_paths import (
    Overwrite,
    ReceiveLimits,
    check_offer_names,
    check_relative_name,
    may_write,
    printable_name,
    target_path,
)


@pytest.mark.parametrize("name", [
    "", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", ".", "..",
    "C:/x", "c:x", "a/D:/b", "a\\b", "..\\..\\x", "a\x00b", "a\nb", "\x1b[2Jx", "a\u202eb",
    "a\u2028b", "x\ud800", "a" * 5000, "a/" * 70 + "b", "é" * 200,
])
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafePathError):
        check_relative_name(name)


@pytest.mark.parametrize("name", ["a", "a/b/c.txt", "folder with spaces/ünïcødé.md",
                                  ".hidden", "..dots..", "a..b", "日本/語", "emoji 👍"])
def test_ordinary_names_pass(name):
    assert "/".join(check_relative_name(name)) == name


@settings(max_examples=300)
@given(st.text(min_size=1, max_size=60))
def test_accepted_names_stay_inside_the_root(name):
    try:
        parts = check_relative_name(name)
    except UnsafePathError:
        return
    root = Path("/srv/receive")
    joined = root.joinpath(*parts)
    assert os.path.normpath(joined) == str(joined)
    assert os.path.commonpath([root, os.path.normpath(joined)]) == str(root)


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_printable_names_contain_no_terminal_controls(name):
    shown = printable_name(name)
    assert "\x1b" not in shown and "\n" not in shown and "\r" not in shown
    assert not any(c in shown for c in "\u202e\u202d\u2066\u2067\u2068\u2069\u200f\u061c")


def test_offer_caps_and_collisions():
    limits = ReceiveLimits(max_files=3, max_total_bytes=100)
    assert check_offer_names([("a", True, 0), ("a/b", False, 5)], limits) == [("a",), ("a", "b")]
    bad_offers = [
        [("x", False, 1)] * 4,
        [("x", False, 60), ("y", False, 60)],
        [("Readme", False, 1), ("README", False, 1)],
        [("caf\u00e9", False, 1), ("cafe\u0301", False, 1)],
        [("a", False, 1), ("a/b", False, 1)],
        [("a", False, -1)],
        [("a", False, True)],
    ]
    for offer in bad_offers:
        with pytest.raises(UnsafePathError):
            check_offer_names(offer, limits)


def test_symlinked_parents_and_targets_are_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symlink"):
        target_path(root, ("link", "file"), create_parents=True)
    (root / "file-link").symlink_to(outside / "victim")
    with pytest.raises(UnsafePathError, match="symlink"):
        target_path(root, ("file-link",), create_parents=True)
    (root / "plain").write_text("x")
    with pytest.raises(UnsafePathError, match="not a folder"):
        target_path(root, ("plain", "inside"), create_parents=True)
    assert target_path(root, ("new", "deep", "f"), create_parents=True) == root / "new/deep/f"
    assert (root / "new" / "deep").is_dir()
    assert os.listdir(outside) == []


def test_overwrite_needs_consent(tmp_path):
    existing = tmp_path / "f"
    existing.write_text("keep")
    assert may_write(tmp_path / "missing", Overwrite.NEVER)
    assert not may_write(existing, Overwrite.NEVER)
    assert may_write(existing, Overwrite.ALWAYS)
    asked = []
    assert may_write(existing, Overwrite.ASK, lambda shown: asked.append(shown) or True)
    assert not may_write(existing, Overwrite.ASK, lambda shown: False)
    assert not may_write(existing, Overwrite.ASK)  # no one to ask: no
    assert asked == [str(existing)]
