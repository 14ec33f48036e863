"""A malicious sender against the real `relay receive`: hostile names (absolute, `..`,
terminal escapes, through a symlink), oversized claims and more data than offered, live and
as dead drops. Every one is refused with a readable error, and nothing is written outside
the target folder (nor, for a refused offer, inside it)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from nacl.public import PrivateKey, PublicKey
from nacl.secret import SecretBox
from twisted.internet import reactor
from twisted.internet.task import deferLater

from relay.client.live.protocol import KIND_DATA, KIND_JSON, SourceEntry
from relay.client.live.session import close_stream, open_stream, start_live_send
from relay.client.local.identity import load_identity
from relay.client.mailbox.client import MailboxClient
from relay.client.mailbox.drop import send_drop
from relay.client.mailbox.inbox import DROP_TYPE, FORMAT_VERSION, send_json
from relay.crypto import b64encode, h2, make_nonce
from tests.e2e.cli_harness import Background, User

EXIT_FAILED, EXIT_VERIFY = 1, 4


async def wait_exit(job: Background, timeout: float = 30.0) -> tuple[int, str]:
    for _ in range(int(timeout / 0.05)):
        if job.process.poll() is not None:
            return job.process.returncode, job.stderr()
        await deferLater(reactor, 0.05)
    job.kill()
    raise AssertionError(f"the receiver did not exit:\n{job.stderr()}")


def offer(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"type": "offer", "version": 1, "entries": entries,
                       "more": False}).encode()


async def hostile_live_send(bob: User, out: Path, entries: list[dict[str, Any]],
                            data: bytes | None = None,
                            extra_args: tuple[str, ...] = ()) -> tuple[int, str, dict]:
    """Offer entries to `relay receive`; with data, send it as the first file's contents
    (whatever was offered). (exit code, stderr, the receiver's answer to the offer)."""
    start = await start_live_send(reactor, bob.relay.url)
    job = bob.start("receive", "-y", "--no-mailbox", "-o", str(out), "--max-size", "1M",
                    *extra_args, env={"RELAY_CODE": start.code})
    try:
        stapled = await start.connect(timeout=30)
        stream = open_stream(stapled, reactor)
        await stream.send(KIND_JSON, offer(entries))
        answer = json.loads((await stream.receive()).payload)
        if data is not None and answer["type"] == "accept":
            await stream.send(KIND_JSON, b'{"type":"file","index":0,"offset":0}')
            await stream.send(KIND_DATA, data)
            answer = json.loads((await stream.receive()).payload)
        await close_stream(stream, reactor)
        code, stderr = await wait_exit(job)
    finally:
        job.kill()
    return code, stderr, answer


def entry(name: str, size: int = 5, is_dir: bool = False) -> dict[str, Any]:
    return {"name": name, "dir": is_dir, "size": size, "mode": 0o644}


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_hostile_live_offers_are_refused(users, tmp_path: Path) -> None:
    bob = users("bob")
    base = tmp_path / "bob-files"
    out = base / "inbox"
    out.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "link").symlink_to(outside)
    cases = [
        ([entry(str(outside / "abs.txt"))], "absolute path"),
        ([entry("../dotdot.txt")], "'..'"),
        ([entry("ok/../../nested.txt")], "'..'"),
        ([entry("\x1b]0;pwned\x07evil.txt")], "control"),
        ([entry("bidi\u202etxt.exe")], "control"),
        ([entry("link/through.txt")], "symlink"),
        ([entry("huge.bin", size=10**15)], "size cap"),
        ([entry(f"many{i}.txt") for i in range(50)], "more than 10 files"),
        ([entry("twice.txt"), entry("TWICE.txt")], "same file"),
    ]
    for entries, reason in cases:
        extra = ("--max-files", "10") if len(entries) > 10 else ()
        code, stderr, answer = await hostile_live_send(bob, out, entries, extra_args=extra)
        assert code == EXIT_FAILED, (reason, stderr)
        assert answer["type"] in ("error", "refuse"), answer
        assert reason in stderr, (reason, stderr)
        assert "\x1b" not in stderr and "\u202e" not in stderr and "\x07" not in stderr
        assert "Traceback" not in stderr

    # More data than offered: refused as it arrives, nothing renamed into place.
    code, stderr, answer = await hostile_live_send(bob, out, [entry("small.txt", size=10)],
                                                   data=b"x" * 100)
    assert code == EXIT_FAILED and "more data than offered" in stderr
    assert answer["type"] == "error"
    assert not (out / "small.txt").exists()

    assert sorted(p.name for p in base.iterdir()) == ["inbox"]
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["link"]
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "dotdot.txt").exists() and not (base / "dotdot.txt").exists()
    assert not (base / "nested.txt").exists()


async def _drop_as(alice: User, bob_pk: bytes, entries: list[SourceEntry]) -> None:
    identity = load_identity(alice.home)
    client = MailboxClient(alice.relay.url, identity.private_key)
    await send_drop(client, identity.private_key, bob_pk, entries)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_hostile_drops_are_refused_and_left_alone(users, tmp_path: Path) -> None:
    alice, bob = users("alice"), users("bob")
    alice.public_key()
    bob.public_key()
    bob.add_contact(alice)
    bob_pk = load_identity(bob.home).public_key
    source = tmp_path / "payload.txt"
    source.write_text("payload")
    base = tmp_path / "bob-files"
    out = base / "inbox"
    out.mkdir(parents=True)

    hostile = [SourceEntry("../escaped.txt", source, False, 7, 0o644),
               SourceEntry("/etc/evil.txt", source, False, 7, 0o644),
               SourceEntry("\x1b[2Jwipe.txt", source, False, 7, 0o644)]
    for item in hostile:
        await _drop_as(alice, bob_pk, [item])
        result = bob.run("receive", "-y", "--mailbox", "-o", str(out))
        assert result.code == EXIT_FAILED, result.stderr
        assert "\x1b" not in result.stderr and "Traceback" not in result.stderr
        # Refused, so not deleted: delete it through the library to go on.
        await _clear_mailbox(bob)
    assert list(base.iterdir()) == [out] and list(out.iterdir()) == []

    # A file notice that claims 10 bytes and carries 30: a verification failure.
    identity = load_identity(alice.home)
    client = MailboxClient(alice.relay.url, identity.private_key)
    skey = os.urandom(32)
    metadata = {"name": "liar.txt", "orig_size": 10, "skey": b64encode(skey)}
    from nacl.public import Box
    nonce = make_nonce(reactor.seconds())
    box = Box(identity.private_key, PublicKey(bob_pk))
    ctext = box.encrypt(json.dumps(metadata).encode(), nonce).ciphertext
    started = await client.start_file_upload(h2(bob_pk), 10, {"ctext": b64encode(ctext),
                                                              "nonce": b64encode(nonce)})
    sealed = SecretBox(skey).encrypt(b"y" * 30)
    await client.upload_file_chunk(started.upload_id, 0, sealed.nonce, sealed.ciphertext, True)
    result = bob.run("receive", "-y", "--mailbox", "-o", str(out))
    assert result.code == EXIT_VERIFY, result.stderr
    assert "more data than its declared" in result.stderr
    assert list(out.iterdir()) == []
    await _clear_mailbox(bob)

    # A manifest whose entry claims a petabyte: refused by the size cap before any download.
    await send_json(client, identity.private_key, bob_pk,
                    {"type": DROP_TYPE, "version": FORMAT_VERSION, "drop": "AAAA", "part": 0,
                     "parts": 1, "entries": [{"name": "big.bin", "dir": False,
                                              "size": 10**15, "mode": 0o644,
                                              "sha256": "0" * 64, "upload": "x"}]},
                    reactor.seconds())
    result = bob.run("receive", "-y", "--mailbox", "--max-size", "1G", "-o", str(out))
    assert result.code == EXIT_FAILED and "size cap" in result.stderr, result.stderr
    assert list(out.iterdir()) == []


async def _clear_mailbox(user: User) -> None:
    identity: PrivateKey = load_identity(user.home).private_key
    client = MailboxClient(user.relay.url, identity)
    messages = await client.download()
    from relay.crypto import b64decode
    await client.delete([b64decode(m["nonce"]) for m in messages])
