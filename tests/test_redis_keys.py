"""Which Redis hash slots each Lua script touches: the audit that keeps a move to Redis
Cluster honest.

Redis Cluster runs a script only if every key it touches hashes to one slot (CRC16 of the
key, or of its `{hash tag}`, mod 16384). The test runs every store operation against a real
Redis, records each script call (its KEYS, and the key names and prefixes it gets in ARGV:
scripts name account, ledger and token keys from those), and checks each script is either
one slot, or listed in CROSS_SLOT with the reason. A new script that crosses slots fails
here until it is tagged or listed.

Every key carries its owner in a hash tag (relay.store.redis.keys), and work that spans
owners (an upload charges the sender's and the client's accounts and fills the recipient's
mailbox) runs one script per owner, so no script crosses slots.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any

import attrs
import pytest
import pytest_twisted

from relay.store.errors import StoreFull
from relay.store.interfaces.files import FileCaps, FileRecord, PartInfo, PutRequest
from relay.store.interfaces.mailbox import CountOp, DeleteOp, MessageTTLOp, ReadOp, StoreMessageOp
from relay.store.interfaces.sessions import Handshake, Session
from relay.store.quota import MessageQuota
from relay.store.redis import channels, files, mailbox, sessions

SLOTS = 16384


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the one Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def hash_tag(key: bytes) -> bytes | None:
    """What Redis Cluster hashes: the text inside the first {...} if not empty, else None."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return None


def key_slot(key: bytes) -> int:
    tag = hash_tag(key)
    return crc16(key if tag is None else tag) % SLOTS


def test_key_slot_matches_redis_cluster():
    assert crc16(b"123456789") == 0x31C3  # the check value of the spec
    assert key_slot(b"foo") == 12182  # CLUSTER KEYSLOT foo
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")
    assert key_slot(b"foo{}{bar}") == crc16(b"foo{}{bar}") % SLOTS  # empty tag: whole key
    assert key_slot(b"foo{{bar}}zap") == crc16(b"{bar") % SLOTS


# Scripts that touch keys of several slots, and why (each a Cluster blocker): none today.
CROSS_SLOT: dict[str, str] = {}


def script_names(store: Any) -> dict[str, str]:
    """Script source -> a readable name, for every script the Redis tables run."""
    names = {}
    for module, prefix in ((sessions, "sessions"), (files, "files"), (channels, "channels")):
        for attr, value in vars(module).items():
            if isinstance(value, str) and "redis.call" in value:
                names[value] = f"{prefix}.{attr}"
    names[store.sessions._prove] = "sessions._PROVE"
    for name, source in mailbox.SCRIPTS.items():
        names[source] = f"mailbox.{name}"
    return names


def touched(keys: list[Any], args: list[Any]) -> tuple[list[bytes], list[bytes]]:
    """(KEYS, the ARGV items that name keys or key prefixes: ours all start "relay:")."""
    names = [k if isinstance(k, bytes) else str(k).encode() for k in keys]
    prefixes = []
    for arg in args:
        value = arg if isinstance(arg, bytes) else str(arg).encode()
        if value.startswith(b"relay:"):
            prefixes.append(value)
    return names, prefixes


def single_slot(touches: tuple[list[bytes], list[bytes]]) -> bool:
    """One slot for sure: a lone key, or names all tagged alike (then the keys a script
    derives from a tagged prefix share its slot too)."""
    keys, prefixes = touches
    if len(keys) == 1 and not prefixes:
        return True
    names = keys + prefixes
    return all(hash_tag(n) is not None for n in names) and len({key_slot(n) for n in names}) == 1


@pytest_twisted.ensureDeferred
async def test_every_script_is_one_slot_or_a_listed_exception(redis_store):
    store = redis_store
    backend = store.mailbox._backend
    calls: dict[str, list[tuple[list[bytes], list[bytes]]]] = defaultdict(list)
    names = script_names(store)
    run_scripts = backend.scripts

    async def recording(batch: list[tuple[str, list[Any], list[Any]]],
                        replicate: bool = False) -> Any:
        for source, keys, args in batch:
            calls[names.get(source, source[:60])].append(touched(list(keys), list(args)))
        return await run_scripts(batch, replicate=replicate)

    backend.scripts = recording  # backend.script runs one through backend.scripts
    # Every kind of store call that runs a script.
    hpk, other, key = os.urandom(32), os.urandom(32), os.urandom(32)
    session = Session(os.urandom(32), os.urandom(32))
    await store.sessions.put_handshake(key, Handshake(os.urandom(32), os.urandom(32),
                                                      os.urandom(32)), 60)
    await store.sessions.replace_handshake(key, Handshake(b"a", b"b"), Handshake(b"a", b"c"), 60)
    await store.sessions.finish_handshake(key, hpk, session, 60)
    await store.sessions.put_handshake(key, Handshake(os.urandom(32), os.urandom(32),
                                                      os.urandom(32)), 60)
    await store.sessions.finish_handshake_claiming_nonces(key, hpk, session, 60,
                                                          [os.urandom(24)], 60)
    await store.sessions.get_session_claiming_nonce(hpk, os.urandom(24), 60)
    quota = MessageQuota(max_messages=10, sender_max_messages=10, client_max_messages=10,
                         client_upload_bytes=10**6, client_upload_window=60)
    await store.mailbox.store_message(other, b"id", b"record", os.urandom(32), 60, quota,
                                      sender=hpk, client="192.0.2.7/32")
    for op in (StoreMessageOp(hpk, b"id", b"r", os.urandom(32), 60, quota, sender=other,
                              client="192.0.2.7/32"), CountOp(hpk), ReadOp(hpk, 0, 1), None):
        await store.sessions.run_command_claiming_nonce(hpk, session, os.urandom(24), 60, op)
    await store.mailbox.count(other)
    await store.mailbox.read(other, 0, 5)
    await store.mailbox.message_ttl(os.urandom(32))
    token = os.urandom(32)
    await store.mailbox.store_message(other, b"id2", b"record", token, 60, quota,
                                      sender=hpk, client="192.0.2.7/32")
    await store.mailbox.store_message(other, b"id2", b"new", os.urandom(32), 60, quota,
                                      sender=other, client="192.0.2.8/32")  # replaces
    await store.mailbox.message_ttl(token)
    await store.sessions.run_command_claiming_nonce(hpk, session, os.urandom(24), 60,
                                                    MessageTTLOp(token))
    await store.sessions.run_command_claiming_nonce(hpk, session, os.urandom(24), 60,
                                                    DeleteOp(hpk, [b"id"]))
    tight = MessageQuota(max_messages=1)
    with pytest.raises(StoreFull):  # refused by the mailbox: the charges are undone
        await store.mailbox.store_message(other, b"id3", b"record", os.urandom(32), 60,
                                          tight, sender=hpk, client="192.0.2.7/32")
    await store.sessions.finish_handshake_claiming_nonces(key, hpk, session, 60,
                                                          [os.urandom(24)], 60)
    await store.mailbox.delete(other, [b"id", b"id2"])
    unlimited = 10**12
    caps = FileCaps(*([unlimited] * 7))
    record = FileRecord(file_id=os.urandom(32), sender=hpk, recipient=other, file_size=100,
                        client="192.0.2.7/32", max_charge=4096, reserved=4096,
                        expires_at=time.time() + 60)
    await store.files.create(record, 60, 60, caps)
    await store.files.put_part(record.file_id, PutRequest(
        0, PartInfo(100, os.urandom(24), os.urandom(8)), 100, True, 10, 10_000, 60, 60, 60,
        caps))
    growing = FileRecord(file_id=os.urandom(32), sender=hpk, recipient=other, file_size=10**6,
                         client="192.0.2.7/32", max_charge=10**6, reserved=4096,
                         expires_at=time.time() + 60)
    await store.files.create(growing, 60, 60, caps)
    await store.files.put_part(growing.file_id, PutRequest(  # holds its growth first
        0, PartInfo(5000, os.urandom(24), os.urandom(8)), 8192, False, 10, 10**6, 60, 60, 60,
        attrs.evolve(caps, window=8192)))
    await store.files.usage(sender=hpk)
    await store.files.delete(record.file_id)
    await store.channels.create("audit", b"record", 60, 100, client="192.0.2.7/32",
                                max_per_client=10)
    await store.channels.replace("audit", 1, b"record", 60, client="192.0.2.7/32")
    await store.channels.create("audit", b"record", 60, 100, client="192.0.2.7/32",
                                max_per_client=10)  # open already: taken
    await store.channels.replace("audit", 2, b"", 0, client="192.0.2.7/32")
    await store.channels.count_hit("audit-hits", 1.0)

    unlisted = {}
    for name, touches in calls.items():
        crossing = [t for t in touches if not single_slot(t)]
        if crossing and name not in CROSS_SLOT:
            unlisted[name] = crossing[0]
    assert unlisted == {}, "scripts touching several slots, neither tagged nor listed"
    # The list names only scripts that exist and cross slots.
    crossing_now = {name for name, touches in calls.items()
                    if any(not single_slot(t) for t in touches)}
    assert set(CROSS_SLOT) == crossing_now
