"""Dead drops through the relay's file API, in-process (the real relay resource over
StubTreq): round trips, the manifest's completeness, tampering, and hostile manifests and
messages (hypothesis: never anything but a ClientError, never a write outside the root)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.public import Box, PrivateKey

from relay.app import build_relay
from relay.client.errors import ClientError, RelayError, TransferError, VerificationError
from relay.client.live.protocol import collect_sources
from relay.client.mailbox import drop as drop_module
from relay.client.mailbox.drop import Collector, DropGroup, group_drops, send_drop
from relay.client.mailbox.inbox import DROP_TYPE, Item, box_text, open_item, open_items, read_all
from relay.client.safe_paths import Overwrite
from relay.config import load_config
from relay.crypto import b64encode, h2, make_nonce
from tests.client.helpers import make_client, wall_clock


def relay_root(clock, **files):
    config = load_config(overrides={"files": {"chunk_store": "store", **files}})
    return build_relay(config, clock).root


def make_tree(base: Path) -> Path:
    top = base / "project"
    (top / "a" / "b").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "a" / "b" / "data.bin").write_bytes(os.urandom(70_000))
    (top / "zero").write_bytes(b"")
    (top / "x.txt").write_text("x")
    os.chmod(top / "x.txt", 0o600)
    os.chmod(top / "a", 0o750)
    return top


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    found = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(root))] = (mode, digest)
    return found


class Pair:
    def __init__(self, max_chunk_size: int = 16 * 1024) -> None:
        self.clock = wall_clock()
        self.root = relay_root(self.clock, max_chunk_size=max_chunk_size)
        self.alice_sk, self.bob_sk = PrivateKey.generate(), PrivateKey.generate()
        self.alice = make_client(self.root, self.clock, self.alice_sk)
        self.bob = make_client(self.root, self.clock, self.bob_sk)
        self.alice_pk = bytes(self.alice_sk.public_key)
        self.bob_pk = bytes(self.bob_sk.public_key)

    def keys(self, hpk: bytes) -> bytes | None:
        return self.alice_pk if hpk == h2(self.alice_pk) else None

    async def bob_items(self) -> list[Item]:
        return open_items(await read_all(self.bob), self.bob_sk, self.keys)

    async def send(self, paths: list[Path], text: str | None = None):
        return await send_drop(self.alice, self.alice_sk, self.bob_pk, collect_sources(paths),
                               text=text, now=self.clock.seconds)


@pytest_twisted.ensureDeferred
async def test_a_folder_tree_round_trips_and_is_deleted_after(tmp_path):
    pair = Pair()
    top = make_tree(tmp_path / "src")
    progress = []
    sent = await send_drop(pair.alice, pair.alice_sk, pair.bob_pk, collect_sources([top]),
                           text="hi", now=pair.clock.seconds,
                           progress=lambda name, done, total: progress.append((done, total)))
    assert sent.files == 3 and sent.bytes == 70_001
    assert progress[-1] == (70_001, 70_001)
    items = await pair.bob_items()
    # one notice per non-empty file, then the manifest last
    assert [i.kind for i in items] == ["file", "file", "drop"]
    notice = items[0].value
    assert {"name", "orig_size", "skey", "md5", "created", "modified", "attrs"} <= set(notice)
    drops, standalone = group_drops(items)
    assert len(drops) == 1 and drops[0].complete and not standalone
    out = tmp_path / "out"
    out.mkdir()
    got = await Collector(pair.bob, out).collect_drop(drops[0])
    assert got.text == "hi" and got.bytes == 70_001 and len(got.files) == 3
    assert snapshot(out / "project") == snapshot(top)
    assert await read_all(pair.bob) == []
    status = await pair.alice.file_status(items[0].upload_id)
    assert status["status"] == "NOT_FOUND"


@pytest_twisted.ensureDeferred
async def test_a_drop_without_its_whole_manifest_is_not_taken(tmp_path, monkeypatch):
    pair = Pair()
    monkeypatch.setattr(drop_module, "ENTRIES_PER_MANIFEST", 2)
    top = make_tree(tmp_path / "src")
    await pair.send([top])
    items = await pair.bob_items()
    manifests = [i for i in items if i.kind == "drop"]
    assert len(manifests) == 4  # 7 entries, 2 per message
    drops, _ = group_drops(items)
    assert drops[0].complete
    partial, _ = group_drops([i for i in items if i is not manifests[-1]])
    assert not partial[0].complete
    with pytest.raises(TransferError, match="still arriving"):
        await Collector(pair.bob, tmp_path).collect_drop(partial[0])
    out = tmp_path / "out"
    out.mkdir()
    await Collector(pair.bob, out).collect_drop(drops[0])
    assert snapshot(out / "project") == snapshot(top)


@pytest_twisted.ensureDeferred
async def test_a_chunk_under_another_key_fails_verification_and_stays(tmp_path):
    pair = Pair()
    (tmp_path / "f.bin").write_bytes(os.urandom(40_000))
    await pair.send([tmp_path / "f.bin"])
    items = await pair.bob_items()
    notice = next(i for i in items if i.kind == "file")
    forged = dict(notice.value, skey=b64encode(os.urandom(32)))
    group = group_drops(items)[0][0]
    group.notices[notice.upload_id] = Item(notice.msg_id, notice.sender_hpk, notice.time,
                                           "file", value=forged, upload_id=notice.upload_id)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(VerificationError, match="does not decrypt"):
        await Collector(pair.bob, out).collect_drop(group)
    assert list(out.iterdir()) == []
    assert len(await read_all(pair.bob)) == 2  # left on the relay


@pytest_twisted.ensureDeferred
async def test_existing_files_block_the_whole_drop_unless_overwriting(tmp_path):
    pair = Pair()
    (tmp_path / "src").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "src" / name).write_text(f"new {name}")
    await pair.send([tmp_path / "src" / "a.txt", tmp_path / "src" / "b.txt"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.txt").write_text("old")
    group = group_drops(await pair.bob_items())[0][0]
    with pytest.raises(TransferError, match="not overwriting"):
        await Collector(pair.bob, out).collect_drop(group)
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # a.txt not written either
    await Collector(pair.bob, out, overwrite=Overwrite.ALWAYS).collect_drop(group)
    assert (out / "b.txt").read_text() == "new b.txt"


@pytest_twisted.ensureDeferred
async def test_glow_style_file_notice_without_a_drop_is_collected_alone(tmp_path):
    pair = Pair()
    data = os.urandom(50_000)
    skey = os.urandom(32)
    metadata = {"name": "glow.bin", "orig_size": len(data), "skey": b64encode(skey),
                "md5": hashlib.md5(data).hexdigest(), "attrs": "600"}
    nonce = make_nonce(pair.clock.seconds())
    ctext = Box(pair.alice_sk, pair.bob_sk.public_key).encrypt(
        json.dumps(metadata).encode(), nonce).ciphertext
    started = await pair.alice.start_file_upload(
        h2(pair.bob_pk), len(data), {"ctext": b64encode(ctext), "nonce": b64encode(nonce)})
    from nacl.secret import SecretBox
    step = started.max_chunk_size - 16
    parts = [data[i:i + step] for i in range(0, len(data), step)]
    for number, part in enumerate(parts):
        sealed = SecretBox(skey).encrypt(part)
        await pair.alice.upload_file_chunk(started.upload_id, number, sealed.nonce,
                                           sealed.ciphertext, number == len(parts) - 1)
    drops, standalone = group_drops(await pair.bob_items())
    assert not drops and len(standalone) == 1
    got = await Collector(pair.bob, tmp_path).collect_file(standalone[0])
    assert (tmp_path / "glow.bin").read_bytes() == data and got.bytes == len(data)
    assert stat.S_IMODE((tmp_path / "glow.bin").stat().st_mode) == 0o600


@pytest_twisted.ensureDeferred
async def test_messages_open_by_kind():
    pair = Pair()
    sender = PrivateKey.generate()
    payload = box_text(pair.alice_sk, pair.bob_pk, "hello", pair.clock.seconds())
    await pair.alice.upload(h2(pair.bob_pk), payload)
    await pair.alice.upload(h2(pair.bob_pk), "plain text")  # glow's unencrypted upload
    stranger = make_client(pair.root, pair.clock, sender)
    await stranger.upload(h2(pair.bob_pk), box_text(sender, pair.bob_pk, "?", 0))
    items = await pair.bob_items()
    assert [(i.kind, i.text, i.encrypted) for i in items] == [
        ("text", "hello", True), ("text", "plain text", False), ("unknown_sender", None, True)]


# ---- hostile input: hypothesis ----------------------------------------------------------

_names = st.one_of(
    st.sampled_from(["a", "a/b", "../x", "/abs", "a/../../x", "C:x", "a\\b", ".", "", "ok.txt",
                     "\x1b[2J", "dir/", "a//b", "\u202eexe", "x" * 300]),
    st.text(max_size=20))
_entries = st.lists(st.fixed_dictionaries({
    "name": _names,
    "dir": st.one_of(st.booleans(), st.none(), st.integers()),
    "size": st.one_of(st.just(0), st.integers(-5, 10**16), st.none(), st.text(max_size=3)),
    "mode": st.one_of(st.integers(-1, 0o10000), st.none()),
    "sha256": st.one_of(st.just(hashlib.sha256(b"").hexdigest()), st.text(max_size=5)),
}), max_size=6)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=_entries)
def test_hostile_manifests_raise_client_errors_and_stay_inside_the_root(tmp_path_factory,
                                                                         entries):
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    root.mkdir()
    value = {"type": DROP_TYPE, "version": 1, "drop": "AAAA", "part": 0, "parts": 1,
             "entries": entries}
    group = DropGroup("AAAA", b"\0" * 32, [Item(b"\1" * 24, b"\0" * 32, 0, "drop", value=value)],
                      {})
    collector = Collector(DeleteOnly(), root)  # type: ignore[arg-type]
    try:
        run_to_completion(collector.collect_drop(group))
    except ClientError:
        pass
    assert sorted(p.name for p in base.iterdir()) == ["root"]
    for path in root.rglob("*"):
        assert os.path.realpath(path).startswith(str(root) + os.sep)


class DeleteOnly:
    """A mailbox client for drops without files to download: deleting is all it may do."""

    async def delete(self, ids):
        return 0

    async def delete_file(self, upload_id):
        raise AssertionError("no file should be reached")


def run_to_completion(coroutine):
    """Run a coroutine that never waits (no relay is reached) to its end, synchronously."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise AssertionError("the collector reached for the relay")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(message=st.dictionaries(
    st.sampled_from(["data", "time", "from", "nonce", "kind", "other"]),
    st.one_of(_json, st.just(b64encode(b"\0" * 32)), st.just(b64encode(b"\0" * 24)),
              st.sampled_from(["file", "message"]), st.just('{"ctext":"AA==","nonce":"AA==",'
                                                            '"uploadID":"x"}'))))
def test_any_downloaded_message_opens_or_is_a_relay_error(message):
    me = PrivateKey.generate()
    try:
        item = open_item(message, me, lambda hpk: bytes(PrivateKey.generate().public_key))
    except RelayError:
        return
    assert item.kind in ("text", "offer", "drop", "file", "unreadable", "unknown_sender")


class Staggered:
    """Wraps a client method: each call waits a little (longer for earlier parts, so answers
    come back out of order) and the most calls at once is recorded."""

    def __init__(self, method):
        self.method = method
        self.now = 0
        self.most = 0

    async def __call__(self, upload_id, part, *args, **kwargs):
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await deferLater(reactor, 0.004 * (3 - part % 4))
            return await self.method(upload_id, part, *args, **kwargs)
        finally:
            self.now -= 1


@pytest_twisted.ensureDeferred
async def test_chunks_move_several_at_a_time_and_arrive_in_order(tmp_path):
    pair = Pair(max_chunk_size=1024)
    source = tmp_path / "many-chunks.bin"
    source.write_bytes(os.urandom(20 * 1000 + 7))  # 21 chunks of 1008 bytes
    uploads = Staggered(pair.alice.upload_file_chunk)
    pair.alice.upload_file_chunk = uploads
    progress = []
    await send_drop(pair.alice, pair.alice_sk, pair.bob_pk, collect_sources([source]),
                    now=pair.clock.seconds,
                    progress=lambda name, done, total: progress.append(done))
    assert uploads.most == drop_module.CHUNKS_IN_FLIGHT
    assert progress == sorted(progress) and progress[-1] == 20_007
    downloads = Staggered(pair.bob.download_file_chunk)
    pair.bob.download_file_chunk = downloads
    (group,), _ = group_drops(await pair.bob_items())
    out = tmp_path / "out"
    out.mkdir()
    await Collector(pair.bob, out).collect_drop(group)
    assert downloads.most == drop_module.CHUNKS_IN_FLIGHT
    assert (out / source.name).read_bytes() == source.read_bytes()


@pytest_twisted.ensureDeferred
async def test_a_failed_chunk_upload_stops_the_drop_and_cancels_the_rest(tmp_path):
    pair = Pair(max_chunk_size=1024)
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(10_000))
    real = pair.alice.upload_file_chunk

    async def failing(upload_id, part, *args, **kwargs):
        if part == 2:
            raise RelayError("uploadFileChunk failed", 500)
        return await real(upload_id, part, *args, **kwargs)

    pair.alice.upload_file_chunk = failing
    with pytest.raises(RelayError):
        await pair.send([source])
    # Without its manifest the drop is given back: nothing is left for bob.
    assert [i.kind for i in await pair.bob_items()] == ["file"]
    status = await pair.alice.file_status((await pair.bob_items())[0].upload_id)
    assert status["status"] == "NOT_FOUND"
