"""The whole-file SHA-256 only where it checks something (live/protocol.py): a recipient that
accepts with "sha256": "resumed" gets no hash for files sent from offset 0 (the records
authenticate them), a hash for resumed files, and an older recipient (no such field) gets
a hash for every file, as before."""

from __future__ import annotations

import hashlib
import json
import os

import pytest_twisted

from relay.client.live.protocol import (
    KIND_JSON,
    SHA256_RESUMED_ONLY,
    collect_sources,
    partial_path,
)
from relay.client.live.receive import receive_files
from relay.client.live.send import send_files
from tests.client.test_client_transfer import run_pair


class Spy:
    """A record channel that notes the JSON messages passing through it."""

    def __init__(self, inner, *, drop_accept_field: bool = False) -> None:
        self.inner = inner
        self.sent: list[dict] = []
        self.received: list[dict] = []
        self.drop_accept_field = drop_accept_field

    async def send(self, kind, payload):
        if kind == KIND_JSON:
            self.sent.append(json.loads(payload))
        await self.inner.send(kind, payload)

    async def receive(self):
        record = await self.inner.receive()
        if record is not None and record.kind == KIND_JSON:
            message = json.loads(record.payload)
            self.received.append(message)
            if self.drop_accept_field and message.get("type") == "accept":
                # What an older recipient says: offsets only.
                message.pop("sha256", None)
                return record._replace(payload=json.dumps(message).encode())
        return record

    async def finish(self):
        await self.inner.finish()

    def ends(self) -> list[dict]:
        return [m for m in self.sent if m["type"] == "end"]


def _files(tmp_path, sizes):
    source = tmp_path / "from"
    source.mkdir()
    paths = []
    for number, size in enumerate(sizes):
        path = source / f"f{number}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    out = tmp_path / "to"
    out.mkdir()
    return paths, out


@pytest_twisted.ensureDeferred
async def test_files_from_offset_0_go_without_a_hash_resumed_ones_with(tmp_path):
    (fresh, resumed), out = _files(tmp_path, [300_000, 200_000])
    partial_path(out / resumed.name).write_bytes(resumed.read_bytes()[:70_000])
    spies = []

    def sender(stream):
        spy = Spy(stream)
        spies.append(spy)
        return send_files(spy, collect_sources([fresh, resumed]), chunk_size=64 * 1024)

    received, sent = await run_pair(sender, lambda r: receive_files(r, out))
    assert sent is None and received.bytes_received == 300_000 + 130_000
    accept = next(m for m in spies[0].received if m["type"] == "accept")
    assert accept["sha256"] == SHA256_RESUMED_ONLY and accept["offsets"] == [0, 70_000]
    fresh_end, resumed_end = spies[0].ends()
    assert "sha256" not in fresh_end
    assert resumed_end["sha256"] == hashlib.sha256(resumed.read_bytes()).hexdigest()
    for path in (fresh, resumed):
        assert (out / path.name).read_bytes() == path.read_bytes()


@pytest_twisted.ensureDeferred
async def test_an_older_recipient_gets_every_files_hash(tmp_path):
    (first, second), out = _files(tmp_path, [100_000, 0])
    spies = []

    def sender(stream):
        spy = Spy(stream, drop_accept_field=True)
        spies.append(spy)
        return send_files(spy, collect_sources([first, second]), chunk_size=64 * 1024)

    received, sent = await run_pair(sender, lambda r: receive_files(r, out))
    assert sent is None
    assert [end["sha256"] for end in spies[0].ends()] == [
        hashlib.sha256(path.read_bytes()).hexdigest() for path in (first, second)]
