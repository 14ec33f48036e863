"""/command in one store call: the session check, nonce claim and mailbox op together, and
the two-call path when this node does not know the session (relay.mailbox.claims)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import attrs
import pytest
from nacl.public import PrivateKey

from relay.app import build_relay
from relay.crypto import b64encode
from relay.store.interfaces.sessions import Session
from tests.mailbox_harness import MemoryRelay
from tests.zax import ZaxClient, stub_post


class Counting:
    """Forwards to a store table, counting the calls by method name."""

    def __init__(self, table: Any, calls: Counter) -> None:
        self._table, self._calls = table, calls

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._table, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self._calls[name] += 1
            return await method(*args, **kwargs)

        return counted


@pytest.fixture
def relay() -> MemoryRelay:
    return MemoryRelay()


def count_store_calls(relay: MemoryRelay) -> Counter:
    calls: Counter = Counter()
    store = relay.app.store
    store.sessions = Counting(store.sessions, calls)
    store.mailbox = Counting(store.mailbox, calls)
    return calls


def test_each_message_command_is_one_store_call(relay):
    alice, bob = relay.connected(), relay.connected()
    calls = count_store_calls(relay)
    status, token, _ = alice.upload(bob, b"hello")
    assert status == 200
    for command in ({"cmd": "count"}, {"cmd": "download"}, {"cmd": "getEntropy", "size": 8},
                    {"cmd": "messageStatus", "token": token.decode()}, {"cmd": "delete",
                                                                        "payload": []}):
        assert bob.command(command)[0] == 200
    assert calls == Counter(run_command_claiming_nonce=6)


def test_each_handshake_step_is_one_store_call(relay):
    client = relay.client()
    calls = count_store_calls(relay)
    assert client.start()[0] == 200
    assert client.verify()[0] == 200
    assert client.prove()[0] == 200
    assert calls == Counter(put_handshake=1, replace_handshake=1,
                            finish_handshake_claiming_nonces=1)


def test_handshake_steps_on_different_nodes():
    a, b = two_nodes()
    on_a = a.client()
    on_b = ZaxClient(stub_post(b.root), a.clock.seconds, identity=on_a.identity,
                     client_token=on_a.client_token)
    assert on_a.start()[0] == 200
    on_b.relay_token, on_b.difficulty = on_a.relay_token, on_a.difficulty
    assert on_b.verify()[0] == 200  # b has not seen the handshake: the store's
    on_a.relay_pk = on_b.relay_pk
    assert on_a.verify()[0] == 200  # a retry on a: a's memory is stale, the same key
    assert on_a.relay_pk == on_b.relay_pk
    assert on_b.prove()[0] == 200
    assert on_b.command({"cmd": "count"})[0] == 200
    assert on_a.prove()[0] == 401  # used


def test_prove_with_a_handshake_verified_again_elsewhere():
    a, b = two_nodes()
    client = a.client()
    assert client.start()[0] == 200 and client.verify()[0] == 200
    # Another node stored another session key for the handshake (two verifies raced):
    # a's remembered one no longer opens the client's box; the store's does.
    sessions = a.app.store.sessions
    key = next(iter(sessions.handshakes._entries))
    stored = sessions.handshakes.get(key)
    other = PrivateKey.generate()
    sessions.handshakes.put(key, attrs.evolve(stored, session_sk=bytes(other)), 300)
    client.relay_pk = bytes(other.public_key)
    assert client.prove()[0] == 200
    assert client.command({"cmd": "count"})[0] == 200


def test_a_session_this_node_has_not_seen_takes_two_calls_then_one(relay):
    client = relay.connected()
    relay.app.processor.sessions_seen.forget(client.hpk)
    calls = count_store_calls(relay)
    assert client.command({"cmd": "count"})[0] == 200
    assert calls == Counter(get_session_claiming_nonce=1, count=1)
    assert client.command({"cmd": "count"})[0] == 200
    assert calls["run_command_claiming_nonce"] == 1


def two_nodes() -> tuple[MemoryRelay, Any]:
    """Node a (a MemoryRelay) and node b's post function, sharing a's store and clock."""
    a = MemoryRelay()
    b = build_relay(a.config, a.clock, store=a.app.store)
    return a, b


def test_newer_session_from_another_node_is_followed():
    a, b = two_nodes()
    post_b = stub_post(b.root)
    client = a.connected()
    on_b = ZaxClient(post_b, a.clock.seconds, identity=client.identity)
    on_b.connect()  # b remembers this session
    assert on_b.command({"cmd": "count"})[0] == 200
    # The client proves again on a: b's remembered session is stale, its box does not open.
    client.connect()
    on_b.session_key, on_b.relay_pk = client.session_key, client.relay_pk
    status, body = on_b.command({"cmd": "count"})
    assert status == 200 and on_b.open(body) == 0


def test_a_command_for_a_replaced_session_is_401_and_stores_nothing(relay):
    client = relay.connected()
    old = client.command_body({"cmd": "upload", "to": b64encode(client.hpk), "payload": "hi"})
    # Another node's /prove replaced the session; this node still remembers the old one,
    # and the command's box opens with it.
    sessions = relay.app.store.sessions
    sessions.sessions.put(client.hpk, Session(os.urandom(32), os.urandom(32)), 3600)
    calls = count_store_calls(relay)
    assert client.post("command", old)[0] == 401
    assert calls == Counter(run_command_claiming_nonce=1, get_session_claiming_nonce=1)
    assert relay.app.store.mailbox._table.messages == 0
    assert relay.app.processor.sessions_seen.get(client.hpk) is None
