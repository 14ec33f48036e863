"""Carry stored messages over from the key layout before hash tags (`relay:mailbox:<hpk>:...`)
to today's (relay.store.redis.keys), with every relay node stopped:

    python -m relay.store.redis.migrate redis://127.0.0.1:6379/0

Each message of each old mailbox is stored again through the Redis store (same id, record,
storage token, sender and client, the time it had left; download order kept), then the old
mailbox, its token keys and the old accounts and upload rates go. Sessions, handshakes and
the nonce cache of the old layout are deleted (clients start new sessions: a replayed command
then finds no session). Files and channels are not carried over: they are left to expire on
their TTLs (files 7 days by default), so a file announced by a carried-over message answers
NOT_FOUND. Running it twice is harmless (nothing old is left the second time).
"""

from __future__ import annotations

import argparse
import sys
from base64 import urlsafe_b64decode
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react

from relay.config import RelayConfig, StoreConfig
from relay.store import Store, open_store
from relay.store.errors import StoreError
from relay.store.quota import MessageQuota

OLD_MAILBOX = "relay:mailbox:"
OLD_PARTS = ("order", "expiry", "records", "tokens", "size")
# Old keys that hold nothing worth carrying over (sessions end, nonces only guard them).
OLD_DROPPED = ("relay:session:*", "relay:nonce:*", "relay:account:*", "relay:rate:upload:*")
UNLIMITED = MessageQuota()  # zeros: no cap (the messages were accepted once already)


def _unb64(text: bytes | str) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def parse_old_entry(entry: bytes) -> tuple[bytes, bytes, str]:
    """(token, sender hpk, client) from an old tokens entry: "<token key>\\n<sender account
    prefix>\\n<client account prefix>", or just the token key (older still)."""
    token_key, _, rest = entry.partition(b"\n")
    sender_prefix, _, client_prefix = rest.partition(b"\n")
    token = _unb64(token_key.rsplit(b":", 1)[-1]) if token_key else b""
    sender = _unb64(sender_prefix.rsplit(b":", 1)[-1]) if sender_prefix else b""
    client = _unb64(client_prefix.rsplit(b":", 1)[-1]).decode() if client_prefix else ""
    return token, sender, client


async def _scan(backend: Any, pattern: str) -> list[bytes]:
    found: list[bytes] = []
    cursor: Any = b"0"
    while True:
        cursor, keys = await backend.run(lambda redis, c=cursor: redis.execute_command(
            "SCAN", c, "MATCH", pattern, "COUNT", 1000))
        found.extend(keys)
        if cursor in (b"0", 0, "0"):
            return found


async def _delete(backend: Any, keys: list[bytes | str]) -> None:
    # One key per command: the keys of different owners would be in different slots.
    for key in keys:
        await backend.run(lambda redis, k=key: redis.execute_command("UNLINK", k))


async def migrate_mailbox(store: Store, order_key: bytes) -> int:
    """Carry one old mailbox over; returns how many messages were (still alive)."""
    backend = store.service.backend  # type: ignore[attr-defined]
    prefix = order_key[:-len(b":order")].decode()
    hpk = _unb64(prefix[len(OLD_MAILBOX):])
    keys = [f"{prefix}:{part}" for part in OLD_PARTS]
    ids = await backend.run(lambda redis: redis.execute_command("ZRANGE", keys[0], 0, -1))
    now_s, now_us = await backend.run(lambda redis: redis.execute_command("TIME"))
    now_ms = int(now_s) * 1000 + int(now_us) // 1000
    found = []
    for msg_id in ids:
        found.append((msg_id, *await backend.run(lambda redis, m=msg_id: _message(redis, keys,
                                                                                  m))))
    # The old token keys first: today's token pointers have the same names. (Stopped half-way,
    # a second run still finds the old mailbox and writes them again.)
    await _delete(backend, [entry.partition(b"\n")[0] for *_, entry in found
                            if entry and entry.partition(b"\n")[0]])
    carried = 0
    for msg_id, deadline, record, entry in found:
        if deadline is None or record is None or entry is None:
            continue
        left = (int(float(deadline)) - now_ms) / 1000
        if left <= 0:
            continue
        token, sender, client = parse_old_entry(entry)
        await store.mailbox.store_message(hpk, msg_id, record, token, left, UNLIMITED,
                                          sender=sender, client=client)
        carried += 1
    await _delete(backend, keys)
    return carried


def _message(redis: Any, keys: list[str], msg_id: bytes) -> Deferred:
    """A message's deadline, record and tokens entry, in one round trip."""
    return gatherResults([redis.execute_command("ZSCORE", keys[1], msg_id),
                          redis.execute_command("HGET", keys[2], msg_id),
                          redis.execute_command("HGET", keys[3], msg_id)])


async def migrate(store: Store, out: Any = sys.stdout) -> tuple[int, int]:
    """Carry every old mailbox over, then drop the old sessions, nonces, accounts and rates.
    Returns (mailboxes, messages)."""
    backend = store.service.backend  # type: ignore[attr-defined]
    mailboxes = messages = 0
    for order_key in await _scan(backend, OLD_MAILBOX + "*:order"):
        messages += await migrate_mailbox(store, order_key)
        mailboxes += 1
        if mailboxes % 1000 == 0:
            print(f"{mailboxes} mailboxes, {messages} messages so far", file=out)
    for pattern in OLD_DROPPED:
        await _delete(backend, await _scan(backend, pattern))
    return mailboxes, messages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m relay.store.redis.migrate",
        description="Carry stored messages over to the key layout with hash tags. Run it "
                    "with every relay node stopped.")
    parser.add_argument("url", help="the relay's store URL (redis://, rediss://, "
                                    "redis+sentinel://, unix://)")
    args = parser.parse_args(argv)

    async def run(reactor: Any) -> None:
        store = open_store(RelayConfig(store=StoreConfig(url=args.url)), reactor)
        store.service.startService()
        try:
            mailboxes, messages = await migrate(store)
        except StoreError as e:
            print(f"migration stopped: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            await store.service.stopService()
        print(f"carried over {messages} messages of {mailboxes} mailboxes")

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
