"""Message quotas over /command: one identity or network cannot fill the relay (507), an
upload flood is slowed (429), and everyone else keeps being served."""

from __future__ import annotations

import os

from relay.config import MIB
from tests.mailbox_harness import MemoryRelay
from tests.zax import ZaxClient

BIG = 150_000  # a 200 KB record in base64, as in the measured attack's 195 KB uploads
RECORD = 4 * BIG // 3 + 500  # at least what a message is charged: base64, JSON, overhead


def identities(relay: MemoryRelay, count: int) -> list[ZaxClient]:
    return [relay.connected() for _ in range(count)]


def test_one_identity_cannot_fill_the_store():
    # Every test client shares one network: lift the network quotas, keep the defaults else.
    relay = MemoryRelay(mailbox={"client_max_bytes": 1024 * MIB, "client_max_messages": 10**6,
                                 "client_upload_bytes": 1024 * MIB})
    attacker, *recipients = identities(relay, 5)
    statuses = [attacker.upload(recipients[i % 4], os.urandom(BIG))[0] for i in range(120)]
    stored = statuses.count(200)
    assert set(statuses) == {200, 507}
    # The sender quota (8 MiB by default) stopped it, far from the 256 MiB store.
    assert 0 < stored * RECORD <= relay.config.mailbox.sender_max_bytes
    usage = relay.app.store.usage()
    assert usage["used_bytes"] < usage["limit_bytes"] // 16
    # Others still get through, to the same mailboxes too.
    other = relay.connected()
    assert other.upload(recipients[0], os.urandom(BIG))[0] == 200
    # Deleting frees the attacker's share again.
    status, body = recipients[0].command({"cmd": "download"})
    mine = [m["nonce"] for m in recipients[0].open(body) if m["from"] == attacker_b64(attacker)]
    assert recipients[0].command({"cmd": "delete", "payload": mine[:3]})[0] == 200
    assert attacker.upload(recipients[0], os.urandom(BIG))[0] == 200


def attacker_b64(client: ZaxClient) -> str:
    from relay.crypto import b64encode

    return b64encode(client.hpk)


def test_one_network_cannot_fill_the_store_with_many_identities():
    relay = MemoryRelay(mailbox={"client_upload_bytes": 1024 * MIB})
    recipient = relay.connected()
    statuses = []
    for sender in identities(relay, 30):
        statuses += [sender.upload(recipient, os.urandom(BIG))[0] for _ in range(5)]
    assert 0 < statuses.count(200) * RECORD <= relay.config.mailbox.client_max_bytes
    assert statuses[-1] == 507


def test_an_upload_flood_gets_429_until_the_window_turns():
    relay = MemoryRelay(mailbox={"client_upload_bytes": 4 * RECORD,
                                 "client_upload_window": 60.0})
    relay.clock.advance(60 - relay.clock.seconds() % 60)
    alice, bob = identities(relay, 2)
    assert [alice.upload(bob, os.urandom(BIG))[0] for _ in range(5)] == [200] * 4 + [429]
    # Reads and deletes are not uploads.
    assert bob.command({"cmd": "count"})[0] == 200
    relay.clock.advance(60)
    assert alice.upload(bob, os.urandom(BIG))[0] == 200


def test_a_full_mailbox_by_bytes_is_507_for_everyone_but_frees_on_delete():
    relay = MemoryRelay(mailbox={"mailbox_max_bytes": 2 * RECORD})
    alice, bob, carol = identities(relay, 3)
    assert [alice.upload(bob, os.urandom(BIG))[0] for _ in range(3)] == [200, 200, 507]
    assert carol.upload(bob, os.urandom(BIG))[0] == 507
    assert carol.upload(alice, os.urandom(BIG))[0] == 200
    status, body = bob.command({"cmd": "download"})
    first = bob.open(body)[0]["nonce"]
    assert bob.command({"cmd": "delete", "payload": [first]})[0] == 200
    assert carol.upload(bob, os.urandom(BIG))[0] == 200
