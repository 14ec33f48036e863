"""Messages stored under the key layout before hash tags are carried over by the migration,
on a real Redis: order, records, tokens, senders' and clients' charges, time left."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from base64 import urlsafe_b64encode

import pytest
import pytest_twisted
from twisted.internet import reactor

from relay.config import RelayConfig, StoreConfig
from relay.store import open_store
from relay.store.errors import StoreFull
from relay.store.quota import MessageQuota
from relay.store.redis.migrate import migrate, parse_old_entry


def b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()


def old_mailbox(server, hpk: bytes, messages: list[tuple[bytes, bytes, float, bytes]]) -> None:
    """Write a mailbox as the old layout did: (id, record, seconds left, tokens entry)."""
    prefix = f"relay:mailbox:{b64(hpk)}"
    now_ms = int(time.time() * 1000)
    for sequence, (msg_id, record, left, entry) in enumerate(messages, 1):
        server.command("ZADD", f"{prefix}:order", sequence, msg_id)
        server.command("ZADD", f"{prefix}:expiry", now_ms + int(left * 1000), msg_id)
        server.command("HSET", f"{prefix}:records", msg_id, record)
        server.command("HSET", f"{prefix}:tokens", msg_id, entry)
        server.command("SET", entry.split(b"\n")[0], b"1", "PX", 600_000)
    server.command("SET", f"{prefix}:size", 999)
    for part in ("order", "expiry", "records", "tokens", "size"):
        server.command("PEXPIRE", f"{prefix}:{part}", 600_000)


def test_old_entries_parse():
    token, sender, client = os.urandom(32), os.urandom(32), "2001:db8::/64"
    entry = (f"relay:token:{b64(token)}\nrelay:account:sender:{b64(sender)}\n"
             f"relay:account:client:{b64(client.encode())}").encode()
    assert parse_old_entry(entry) == (token, sender, client)
    assert parse_old_entry(f"relay:token:{b64(token)}".encode()) == (token, b"", "")
    assert parse_old_entry(f"relay:token:{b64(token)}\n\n".encode()) == (token, b"", "")


@pytest_twisted.ensureDeferred
async def test_migration_carries_messages_over(redis_server):
    redis_server.flush()
    hpk, sender, client = os.urandom(32), os.urandom(32), "192.0.2.0/24"
    tokens = [os.urandom(32) for _ in range(3)]
    charged = (f"\nrelay:account:sender:{b64(sender)}"
               f"\nrelay:account:client:{b64(client.encode())}").encode()
    old_mailbox(redis_server, hpk, [
        (b"first", b"record-1", 100.0, f"relay:token:{b64(tokens[0])}".encode() + charged),
        (b"gone", b"record-x", -5.0, f"relay:token:{b64(tokens[1])}".encode() + charged),
        (b"second", b"record-2", 200.0, f"relay:token:{b64(tokens[2])}".encode()),
    ])
    redis_server.command("SET", f"relay:session:{b64(hpk)}", b"s", "PX", 600_000)
    redis_server.command("SET", f"relay:nonce:{b64(os.urandom(24))}", b"1", "PX", 600_000)
    redis_server.command("HSET", f"relay:account:sender:{b64(sender)}:sizes", "total", 9)

    store = open_store(RelayConfig(store=StoreConfig(url=redis_server.url)), reactor)
    store.service.startService()
    try:
        assert await migrate(store, out=open(os.devnull, "w")) == (1, 2)
        mailbox = store.mailbox
        assert await mailbox.read(hpk, 0, 10) == [b"record-1", b"record-2"]
        assert 95 <= await mailbox.message_ttl(tokens[0]) <= 100
        assert 195 <= await mailbox.message_ttl(tokens[2]) <= 200
        assert await mailbox.message_ttl(tokens[1]) == -2  # expired before the migration
        # The carried-over message is charged to its sender and client again.
        with pytest.raises(StoreFull):
            await mailbox.store_message(os.urandom(32), b"id", b"r", os.urandom(32), 60,
                                        MessageQuota(sender_max_messages=1), sender=sender)
        with pytest.raises(StoreFull):
            await mailbox.store_message(os.urandom(32), b"id", b"r", os.urandom(32), 60,
                                        MessageQuota(client_max_messages=1), client=client)
        # Nothing of the old layout is left (token pointers keep their names: the carried
        # messages' are today's), and a second run finds nothing.
        untagged = {k for k in redis_server.keys() if not k.startswith(b"relay:{")}
        assert untagged == {f"relay:token:{b64(tokens[i])}".encode() for i in (0, 2)}
        assert await migrate(store, out=open(os.devnull, "w")) == (0, 0)
    finally:
        await store.service.stopService()


def test_migration_command_line(redis_server):
    redis_server.flush()
    hpk = os.urandom(32)
    old_mailbox(redis_server, hpk, [(b"id", b"rec", 100.0,
                                     f"relay:token:{b64(os.urandom(32))}".encode())])
    done = subprocess.run([sys.executable, "-m", "relay.store.redis.migrate",
                           redis_server.url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "carried over 1 messages of 1 mailboxes"
    assert redis_server.command("ZCARD", f"relay:{{i.{b64(hpk)}}}:mbox:order") == 1
