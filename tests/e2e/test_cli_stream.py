"""stdin to stdout, streamed: `relay send -` reads stdin while it sends, `relay receive
--stdout` writes each record as it arrives; the receiver's cap stops an endless stream; a
stdin that nobody came for is still left as a dead drop."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.e2e.cli_harness import CODE_LINE, DROP_LINE

MIB = 1024 * 1024
EXIT_FAILED = 1


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


@pytest.mark.slow
def test_stdin_streams_to_stdout_before_the_sender_is_done(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    data = random_bytes(20 * MIB)  # `head -c 20M /dev/urandom | relay send -`
    half = len(data) // 2
    sender = alice.start("send", "-", stdin_pipe=True)
    code = sender.wait_for(CODE_LINE).group(1)
    receiver = bob.start("receive", "-y", "--no-mailbox", "--stdout", env={"RELAY_CODE": code})
    assert sender.process.stdin is not None
    sender.process.stdin.write(data[:half])  # blocks until the sender reads it
    sender.process.stdin.flush()
    deadline = time.monotonic() + 30
    while receiver.out.stat().st_size < half // 2:
        assert time.monotonic() < deadline, receiver.stderr()
        assert receiver.process.poll() is None, receiver.stderr()
        time.sleep(0.05)
    # The receiver's stdout has bytes while the sender still waits for the rest of stdin.
    assert sender.process.poll() is None
    sender.process.stdin.write(data[half:])
    sender.process.stdin.close()
    received = receiver.wait()
    assert received.code == 0, received.stderr
    assert hashlib.sha256(received.stdout).digest() == hashlib.sha256(data).digest()
    assert "size unknown (a stream)" in received.stderr
    sent = sender.wait()
    assert sent.code == 0, sent.stderr
    assert "stdin, size unknown" in sent.stderr
    assert not list(bob.cwd.iterdir())  # --stdout wrote nothing to the folder


@pytest.mark.slow
def test_the_receivers_cap_stops_an_endless_stream(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    sender = alice.start("send", "-", "--name", "endless.bin", stdin_pipe=True)
    code = sender.wait_for(CODE_LINE).group(1)
    out = tmp_path / "capped"
    receiver = bob.start("receive", "-y", "--no-mailbox", "--max-size", "2M", "-o", str(out),
                         env={"RELAY_CODE": code})
    assert sender.process.stdin is not None
    block = random_bytes(MIB)
    try:
        for _ in range(64):  # far more than the cap; the sender fails before the end
            sender.process.stdin.write(block)
    except BrokenPipeError:
        pass  # the sender gave up and exited
    received = receiver.wait()
    assert received.code == EXIT_FAILED, received.stderr
    assert "cap" in received.stderr and "Traceback" not in received.stderr
    assert sender.wait().code == EXIT_FAILED
    assert not out.exists() or not list(out.iterdir())  # no file, no partial


@pytest.mark.slow
def test_stdin_nobody_came_for_is_left_as_a_drop(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    data = random_bytes(300_000)
    sent = alice.run("send", "--drop", "--wait", "1", "-", "--name", "later.bin", stdin=data)
    assert sent.code == 0, sent.stderr
    drop_code = DROP_LINE.search(sent.stderr).group(1)
    out = tmp_path / "dropped"
    received = bob.run("receive", "-y", "-o", str(out), env={"RELAY_CODE": drop_code})
    assert received.code == 0, received.stderr
    assert (out / "later.bin").read_bytes() == data
