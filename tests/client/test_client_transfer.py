"""The live transfer protocol between two in-process peers over loopback TCP records."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from relay.client.errors import ClientError, TransferError, UnsafePathError
from relay.client.live.protocol import KIND_JSON, PARTIAL_SUFFIX, collect_sources, partial_path
from relay.client.live.receive import receive_files
from relay.client.live.send import send_files
from relay.client.safe_paths import Overwrite, ReceiveLimits
from tests.client.streams import loopback_streams


def make_tree(base: Path) -> Path:
    top = base / "project"
    (top / "src" / "deep").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "src" / "a.txt").write_bytes(b"hello")
    (top / "src" / "deep" / "big.bin").write_bytes(os.urandom(300_000))
    (top / "zero").write_bytes(b"")
    script = top / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(script, 0o751)
    os.chmod(top / "empty", 0o750)
    return top


def tree_of(root: Path) -> dict[str, tuple[str, int]]:
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            result[rel] = (digest, mode)
    return result


async def run_pair(sender_coro_factory, receiver_coro_factory, **stream_kwargs):
    async with loopback_streams(**stream_kwargs) as (sender, recipient):
        sending = Deferred.fromCoroutine(sender_coro_factory(sender))
        receiving = Deferred.fromCoroutine(receiver_coro_factory(recipient))
        results = []
        for d in (receiving, sending):
            try:
                results.append(await d)
            except ClientError as e:
                results.append(e)
        return results  # [receiver outcome, sender outcome]


@pytest_twisted.ensureDeferred
async def test_folders_files_and_text_arrive_intact_with_modes(tmp_path):
    top = make_tree(tmp_path / "from")
    single = tmp_path / "from" / "note.md"
    single.write_text("a note")
    out = tmp_path / "to"
    out.mkdir()
    entries = collect_sources([top, single])
    seen = []
    received, sent = await run_pair(
        lambda s: send_files(s, entries, text="hi there", chunk_size=16 * 1024),
        lambda r: receive_files(r, out, progress=lambda n, d, t: seen.append((d, t))))
    assert sent is None
    assert received.text == "hi there"
    assert tree_of(out / "project") == tree_of(top)
    assert (out / "note.md").read_text() == "a note"
    assert received.bytes_received == sum(e.size for e in entries)
    assert seen[-1] == (received.bytes_received, received.bytes_received)
    assert not list(out.rglob("*" + PARTIAL_SUFFIX))


@pytest_twisted.ensureDeferred
async def test_text_only():
    received, sent = await run_pair(lambda s: send_files(s, [], text="just words"),
                                    lambda r: receive_files(r, Path("/nonexistent")))
    assert received.text == "just words" and received.files == [] and sent is None


@pytest_twisted.ensureDeferred
async def test_an_interrupted_transfer_resumes_where_it_stopped(tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(1_000_000))
    out = tmp_path / "out"
    out.mkdir()
    entries = collect_sources([source])

    async def send_then_cut(stream):
        def cut(_name, done, _total):
            if done >= 400_000:
                stream.transport.abortConnection()
        await send_files(stream, entries, chunk_size=50_000, progress=cut)

    received, sent = await run_pair(send_then_cut, lambda r: receive_files(r, out))
    assert isinstance(received, ClientError) and isinstance(sent, ClientError)
    assert not (out / "big.bin").exists()
    kept = partial_path(out / "big.bin").stat().st_size
    assert 0 < kept < 1_000_000

    received, sent = await run_pair(lambda s: send_files(s, entries, chunk_size=50_000),
                                    lambda r: receive_files(r, out))
    assert sent is None
    assert received.bytes_received == 1_000_000 - kept
    assert (out / "big.bin").read_bytes() == source.read_bytes()
    assert not partial_path(out / "big.bin").exists()


@pytest_twisted.ensureDeferred
async def test_a_stale_partial_of_another_file_is_not_resumed(tmp_path):
    """Resume by content: the receiver's partial is not this file's beginning, so the
    sender sends the whole file and the receiver starts over (no SHA-256 failure at the
    end)."""
    source = tmp_path / "f.bin"
    source.write_bytes(b"A" * 1000)
    out = tmp_path / "out"
    out.mkdir()
    partial_path(out / "f.bin").write_bytes(b"B" * 400)  # not a prefix of the file
    entries = collect_sources([source])
    received, sent = await run_pair(lambda s: send_files(s, entries),
                                    lambda r: receive_files(r, out))
    assert received.bytes_received == 1000 and not partial_path(out / "f.bin").exists()
    assert sent is None and (out / "f.bin").read_bytes() == b"A" * 1000


@pytest_twisted.ensureDeferred
async def test_existing_files_are_not_overwritten_without_consent(tmp_path):
    source = tmp_path / "same.txt"
    source.write_text("new")
    out = tmp_path / "out"
    out.mkdir()
    (out / "same.txt").write_text("old")
    entries = collect_sources([source])
    received, sent = await run_pair(lambda s: send_files(s, entries),
                                    lambda r: receive_files(r, out))
    assert isinstance(received, TransferError) and "not overwriting" in str(received)
    assert isinstance(sent, TransferError) and "not overwriting" in str(sent)
    assert (out / "same.txt").read_text() == "old"
    received, sent = await run_pair(
        lambda s: send_files(s, entries),
        lambda r: receive_files(r, out, overwrite=Overwrite.ASK, ask=lambda name: True))
    assert sent is None and (out / "same.txt").read_text() == "new"


async def raw_offer(stream, entries, then=()):
    """Offer entries, then send each of `then` (its first byte is the record kind)."""
    await stream.send(KIND_JSON, json.dumps({"type": "offer", "version": 1,
                                             "entries": entries}).encode())
    for record in then:
        await stream.send(record[0], record[1:])
    reply = await stream.receive()
    assert reply.kind == KIND_JSON
    return json.loads(reply.payload)


@pytest.mark.parametrize("name", ["../escape", "/etc/x", "a\\b", "\x1b]0;pwned\x07", "C:x"])
@pytest_twisted.ensureDeferred
async def test_hostile_names_are_refused_before_touching_the_disk(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    received, reply = await run_pair(
        lambda s: raw_offer(s, [{"name": name, "dir": False, "size": 1, "mode": 0o644}]),
        lambda r: receive_files(r, out))
    assert isinstance(received, UnsafePathError)
    assert reply["type"] == "refuse" and "\x1b" not in reply["reason"]
    assert os.listdir(out) == [] and os.listdir(tmp_path) == ["out"]


@pytest_twisted.ensureDeferred
async def test_caps_and_excess_data_are_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    received, reply = await run_pair(
        lambda s: raw_offer(s, [{"name": "x", "dir": False, "size": 10 ** 6, "mode": 0o644}]),
        lambda r: receive_files(r, out, limits=ReceiveLimits(max_total_bytes=1000)))
    assert isinstance(received, UnsafePathError) and reply["type"] == "refuse"

    too_much = [b'J{"type":"file","index":0,"offset":0}', b"D" + bytes(11)]
    received, reply = await run_pair(
        lambda s: raw_offer(s, [{"name": "x", "dir": False, "size": 10, "mode": 0o644}],
                            then=too_much),
        lambda r: receive_files(r, out))
    # the accept comes first; the error after it
    assert reply["type"] == "accept"
    assert isinstance(received, TransferError) and "more data than offered" in str(received)
    assert not (out / "x").exists()


def test_collect_refuses_symlinks(tmp_path):
    (tmp_path / "target").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(TransferError, match="symlink"):
        collect_sources([tmp_path / "link"])
