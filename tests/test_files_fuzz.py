"""Hypothesis on the file commands' fields and chunk line: never a 500, a refusal changes
nothing, and every success has the line count glow.ts checks."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from relay.crypto import b64decode, b64encode, make_nonce
from relay.files.ids import file_id
from tests.mailbox_harness import MemoryRelay
from tests.test_files_support import SealedFile

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
FILE_COMMANDS = ["startFileUpload", "uploadFileChunk", "fileStatus", "downloadFileChunk",
                 "deleteFile"]
FIELDS = ["to", "file_size", "metadata", "uploadID", "part", "nonce", "last_chunk"]


def _sync(coroutine):
    results: list = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    return results[0]


class World:
    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="relay-files-fuzz-")
        self.relay = MemoryRelay(files={"directory": os.path.join(self.directory, "chunks"),
                                        "max_file_size": 100_000})
        self.alice, self.bob = self.relay.connected(), self.relay.connected()
        answer = self.alice.open(self.alice.command({
            "cmd": "startFileUpload", "to": b64encode(self.bob.hpk), "file_size": 2500,
            "metadata": {"nonce": b64encode(make_nonce(self.relay.clock.seconds())),
                         "ctext": "aGVsbG8="}})[1])
        self.upload_id = answer["uploadID"]
        self.file_id = file_id(b64decode(self.upload_id))
        self.sealed = SealedFile(os.urandom(2500))
        assert self.alice.command(*self.sealed.command(self.upload_id, 0))[0] == 200

    def snapshot(self) -> tuple:
        files = self.relay.app.store.files
        record = _sync(files.get(self.file_id, all_parts=True))
        chunks = sorted(os.listdir(os.path.join(self.directory, "chunks", self.file_id.hex())))
        return (record, _sync(files.usage()), _sync(self.relay.app.store.mailbox.count(
            self.bob.hpk)), chunks)


@pytest.fixture(scope="module")
def world():
    world = World()
    yield world
    shutil.rmtree(world.directory, ignore_errors=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8)


def special_values(world: World) -> st.SearchStrategy:
    return st.sampled_from([
        world.upload_id, b64encode(os.urandom(32)), b64encode(world.bob.hpk),
        b64encode(world.alice.hpk), b64encode(os.urandom(24)), -1, 0, 1, 3, 2**31, 2**63,
        True, False, {"nonce": b64encode(os.urandom(24)), "ctext": "aGVsbG8="},
        {"nonce": 5, "ctext": "aGVsbG8="}, {"nonce": b64encode(os.urandom(24))}, 100_001])


def chunk_lines() -> st.SearchStrategy:
    return st.one_of(
        st.none(),
        st.binary(min_size=0, max_size=64).map(lambda b: b64encode(b).encode()),
        st.binary(max_size=64),
        st.binary(min_size=1, max_size=64).map(lambda b: b64encode(b).encode()[:-1]),
        st.just(b64encode(os.urandom(600_000)).encode()))


@SETTINGS
@given(data=st.data())
def test_file_command_fields(world, data):
    name = data.draw(st.sampled_from(FILE_COMMANDS))
    fields = data.draw(st.dictionaries(st.sampled_from(FIELDS),
                                       json_values | special_values(world), max_size=5))
    extra = data.draw(chunk_lines())
    client = data.draw(st.sampled_from([world.alice, world.bob]))
    before = world.snapshot()
    status, body = client.command({"cmd": name, **fields}, extra)
    assert status != 500
    if status != 200:
        assert body == b""
        assert world.snapshot() == before, (name, fields)
        return
    lines = body.split(b"\r\n")
    assert len(lines) in ((2, 3) if name == "downloadFileChunk" else (2,))
    answer = client.open(b"\r\n".join(lines[:2]))
    if name == "startFileUpload":
        assert set(answer) == {"uploadID", "max_chunk_size", "storage_token"}
    elif name == "downloadFileChunk":
        assert answer == ({"status": "NOT_FOUND"} if len(lines) == 2 else
                          {"nonce": answer["nonce"]})
    else:
        assert answer["status"] in ("OK", "NOT_FOUND", "START", "UPLOADING", "COMPLETE")
    if name == "deleteFile" and answer["status"] == "OK":
        # Put the file back for the next examples.
        shutil.rmtree(world.directory, ignore_errors=True)
        world.__init__()


@SETTINGS
@given(line=chunk_lines(), part=st.integers(min_value=-3, max_value=5),
       last=st.booleans())
def test_chunk_lines(world, line, part, last):
    command, _ = world.sealed.command(world.upload_id, max(part, 0))
    command = dict(command, part=part, last_chunk=last)
    before = world.snapshot()
    status, body = world.alice.command(command, line)
    assert status != 500
    if status != 200:
        assert world.snapshot() == before
