"""The store contract: every store kind (memory, Redis) behaves the same.

Each test runs once per kind through the `store_factory` fixture (tests/conftest.py).
Expiry tests use TTLs of a few tenths of a second: `store_sleep` advances the memory
store's clock and really waits for Redis.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, gatherResults

from relay.store.errors import StoreFull, StoreRateLimited
from relay.store.interfaces.mailbox import (
    CountOp,
    DeleteOp,
    MessageTTLOp,
    ReadOp,
    StoreMessageOp,
)
from relay.store.interfaces.sessions import Claim, Handshake, Session
from relay.store.quota import MESSAGE_OVERHEAD, MessageQuota
from tests.store_models import model_test

SHORT_TTL = 0.3
# Comfortably past SHORT_TTL, so Redis's expiry (ms precision) has surely happened.
PAST_SHORT_TTL = 0.45
LONG_TTL = 3600.0


def random_key() -> bytes:
    return os.urandom(32)


def both(*coroutines) -> Deferred:
    """Start the coroutines together (interleaved on the reactor) and gather their results."""
    return gatherResults([Deferred.fromCoroutine(c) for c in coroutines])


# -- handshakes -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_handshake_put_get(store_factory):
    sessions = store_factory.sessions
    key = random_key()
    assert await sessions.get_handshake(key) is None
    handshake = Handshake(client_token=os.urandom(32), relay_token=os.urandom(32))
    await sessions.put_handshake(key, handshake, LONG_TTL)
    assert await sessions.get_handshake(key) == handshake
    assert await sessions.get_handshake(random_key()) is None


@pytest_twisted.ensureDeferred
async def test_handshake_replace_keeps_session_key(store_factory):
    sessions = store_factory.sessions
    key = random_key()
    first = Handshake(client_token=os.urandom(32), relay_token=os.urandom(32))
    await sessions.put_handshake(key, first, LONG_TTL)
    second = Handshake(first.client_token, first.relay_token, session_sk=os.urandom(32))
    await sessions.put_handshake(key, second, LONG_TTL)
    assert await sessions.get_handshake(key) == second


@pytest_twisted.ensureDeferred
async def test_finish_handshake_only_once(store_factory):
    sessions = store_factory.sessions
    key, hpk = random_key(), random_key()
    handshake = Handshake(os.urandom(32), os.urandom(32), os.urandom(32))
    await sessions.put_handshake(key, handshake, LONG_TTL)
    session = Session(os.urandom(32), os.urandom(32))
    assert await sessions.finish_handshake(key, hpk, session, LONG_TTL) is True
    assert await sessions.get_session(hpk) == session
    assert await sessions.get_handshake(key) is None
    other = Session(os.urandom(32), os.urandom(32))
    assert await sessions.finish_handshake(key, hpk, other, LONG_TTL) is False
    assert await sessions.get_session(hpk) == session


@pytest_twisted.ensureDeferred
async def test_concurrent_finishes_succeed_once(store_factory):
    sessions = store_factory.sessions
    key, hpk = random_key(), random_key()
    await sessions.put_handshake(key, Handshake(os.urandom(32), os.urandom(32)), LONG_TTL)
    results = await both(*(sessions.finish_handshake(key, hpk, Session(bytes([i]) * 32,
                                                                         b"pk" * 16), LONG_TTL)
                           for i in range(8)))
    assert results.count(True) == 1 and results.count(False) == 7


@pytest_twisted.ensureDeferred
async def test_finished_session_expires(store_factory, store_sleep):
    sessions = store_factory.sessions
    key, hpk = random_key(), random_key()
    await sessions.put_handshake(key, Handshake(os.urandom(32), os.urandom(32)), LONG_TTL)
    assert await sessions.finish_handshake(key, hpk, Session(b"s" * 32, b"c" * 32), SHORT_TTL)
    await store_sleep(PAST_SHORT_TTL)
    assert await sessions.get_session(hpk) is None


@pytest_twisted.ensureDeferred
async def test_handshake_expires(store_factory, store_sleep):
    sessions = store_factory.sessions
    key, kept = random_key(), random_key()
    handshake = Handshake(os.urandom(32), os.urandom(32))
    await sessions.put_handshake(key, handshake, SHORT_TTL)
    await sessions.put_handshake(kept, handshake, LONG_TTL)
    assert await sessions.get_handshake(key) == handshake
    await store_sleep(PAST_SHORT_TTL)
    assert await sessions.get_handshake(key) is None
    assert await sessions.finish_handshake(key, random_key(), Session(b"s", b"c"), LONG_TTL) \
        is False
    assert await sessions.get_handshake(kept) == handshake


# -- sessions ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_session_put_get_replace(store_factory):
    sessions = store_factory.sessions
    hpk = random_key()
    assert await sessions.get_session(hpk) is None
    first = Session(relay_sk=os.urandom(32), client_pk=os.urandom(32))
    await sessions.put_session(hpk, first, LONG_TTL)
    assert await sessions.get_session(hpk) == first
    second = Session(relay_sk=os.urandom(32), client_pk=os.urandom(32))
    await sessions.put_session(hpk, second, LONG_TTL)
    assert await sessions.get_session(hpk) == second
    assert await sessions.get_session(random_key()) is None


@pytest_twisted.ensureDeferred
async def test_session_expires_and_replacing_renews_it(store_factory, store_sleep):
    sessions = store_factory.sessions
    hpk, renewed = random_key(), random_key()
    session = Session(os.urandom(32), os.urandom(32))
    await sessions.put_session(hpk, session, SHORT_TTL)
    await sessions.put_session(renewed, session, SHORT_TTL)
    await sessions.put_session(renewed, session, LONG_TTL)
    await store_sleep(PAST_SHORT_TTL)
    assert await sessions.get_session(hpk) is None
    assert await sessions.get_session(renewed) == session


# -- nonces -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_session_with_nonce_claim(store_factory):
    sessions = store_factory.sessions
    hpk, nonce = random_key(), os.urandom(24)
    # No session: nothing claimed.
    assert await sessions.get_session_claiming_nonce(hpk, nonce, LONG_TTL) == (None, False)
    session = Session(os.urandom(32), os.urandom(32))
    await sessions.put_session(hpk, session, LONG_TTL)
    assert await sessions.get_session_claiming_nonce(hpk, nonce, LONG_TTL) == (session, True)
    assert await sessions.get_session_claiming_nonce(hpk, nonce, LONG_TTL) == (session, False)
    assert await sessions.claim_nonce(hpk, nonce, LONG_TTL) is False
    # Nonces are per identity (a box opens only for the identity it was made for).
    assert await sessions.claim_nonce(random_key(), nonce, LONG_TTL) is True


@pytest_twisted.ensureDeferred
async def test_claimed_nonce_is_forgotten_after_its_ttl(store_factory, store_sleep):
    sessions = store_factory.sessions
    hpk, nonce = random_key(), os.urandom(24)
    await sessions.put_session(hpk, Session(os.urandom(32), os.urandom(32)), LONG_TTL)
    assert (await sessions.get_session_claiming_nonce(hpk, nonce, SHORT_TTL))[1] is True
    await store_sleep(PAST_SHORT_TTL)
    assert (await sessions.get_session_claiming_nonce(hpk, nonce, SHORT_TTL))[1] is True


@pytest_twisted.ensureDeferred
async def test_claim_nonce_rejects_replays(store_factory):
    sessions = store_factory.sessions
    hpk, nonce = random_key(), os.urandom(24)
    assert await sessions.claim_nonce(hpk, nonce, LONG_TTL) is True
    assert await sessions.claim_nonce(hpk, nonce, LONG_TTL) is False
    assert await sessions.claim_nonce(hpk, os.urandom(24), LONG_TTL) is True


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_of_one_nonce_succeed_once(store_factory):
    sessions = store_factory.sessions
    hpk, nonce = random_key(), os.urandom(24)
    results = await both(*(sessions.claim_nonce(hpk, nonce, LONG_TTL) for _ in range(8)))
    assert results.count(True) == 1


@pytest_twisted.ensureDeferred
async def test_claimed_nonce_is_free_again_after_its_ttl(store_factory, store_sleep):
    sessions = store_factory.sessions
    hpk, nonce = random_key(), os.urandom(24)
    assert await sessions.claim_nonce(hpk, nonce, SHORT_TTL) is True
    assert await sessions.claim_nonce(hpk, nonce, SHORT_TTL) is False
    await store_sleep(PAST_SHORT_TTL)
    assert await sessions.claim_nonce(hpk, nonce, SHORT_TTL) is True


# -- mailbox ----------------------------------------------------------------------------------


async def fill(mailbox, hpk: bytes, count: int, ttl: float = LONG_TTL) -> list[tuple]:
    """Store count messages; return their (id, record, token), oldest first."""
    messages = []
    for i in range(count):
        message = (os.urandom(24), b'{"n":%d}' % i, os.urandom(32))
        await mailbox.store_message(hpk, message[0], message[1], message[2], ttl, 1000)
        messages.append(message)
    return messages


@pytest_twisted.ensureDeferred
async def test_mailbox_store_count_read_oldest_first(store_factory):
    mailbox = store_factory.mailbox
    hpk = random_key()
    assert await mailbox.count(hpk) == 0
    assert await mailbox.read(hpk, 0, 10) == []
    messages = await fill(mailbox, hpk, 5)
    assert await mailbox.count(hpk) == 5
    assert await mailbox.read(hpk, 0, 10) == [record for _, record, _ in messages]
    # Other mailboxes are untouched.
    assert await mailbox.count(random_key()) == 0


@pytest_twisted.ensureDeferred
async def test_mailbox_read_pages(store_factory):
    mailbox = store_factory.mailbox
    hpk = random_key()
    records = [record for _, record, _ in await fill(mailbox, hpk, 7)]
    for start in range(0, 9):
        for count in range(0, 9):
            assert await mailbox.read(hpk, start, count) == records[start:start + count]


@pytest_twisted.ensureDeferred
async def test_records_are_opaque_bytes(store_factory):
    mailbox = store_factory.mailbox
    hpk = random_key()
    # Numbers, empty, non-UTF-8, CR LF and NUL must all come back byte for byte.
    records = [b"123", b"", b"\xff\xfe\x00\r\n", b"-1.5", b"OK", os.urandom(300)]
    for record in records:
        await mailbox.store_message(hpk, os.urandom(24), record, os.urandom(32), LONG_TTL, 100)
    assert await mailbox.read(hpk, 0, 100) == records


@pytest_twisted.ensureDeferred
async def test_replacing_same_id_keeps_one_copy_and_moves_it_last(store_factory):
    mailbox = store_factory.mailbox
    hpk = random_key()
    messages = await fill(mailbox, hpk, 3)
    first_id, _, token = messages[0]
    await mailbox.store_message(hpk, first_id, b"new", token, LONG_TTL, 1000)
    assert await mailbox.count(hpk) == 3
    assert await mailbox.read(hpk, 0, 10) == [messages[1][1], messages[2][1], b"new"]
    assert await mailbox.message_ttl(token) > 0


@pytest_twisted.ensureDeferred
async def test_replacing_with_a_new_token_forgets_the_old_one(store_factory):
    mailbox = store_factory.mailbox
    hpk = random_key()
    (msg_id, _, old_token), = await fill(mailbox, hpk, 1)
    new_token = os.urandom(32)
    await mailbox.store_message(hpk, msg_id, b"new", new_token, LONG_TTL, 1000)
    assert await mailbox.message_ttl(old_token) == -2
    assert await mailbox.message_ttl(new_token) > 0


@pytest_twisted.ensureDeferred
async def test_full_mailbox_raises_and_stores_nothing(store_factory):
    mailbox = store_factory.mailbox
    hpk = random_key()
    cap = 3
    messages = []
    for i in range(cap):
        message = (os.urandom(24), b"m%d" % i, os.urandom(32))
        await mailbox.store_message(hpk, *message, LONG_TTL, cap)
        messages.append(message)
    extra_id, extra_token = os.urandom(24), os.urandom(32)
    with pytest.raises(StoreFull):
        await mailbox.store_message(hpk, extra_id, b"extra", extra_token, LONG_TTL, cap)
    assert await mailbox.count(hpk) == cap
    assert await mailbox.read(hpk, 0, 10) == [record for _, record, _ in messages]
    assert await mailbox.message_ttl(extra_token) == -2
    # Replacing a message that is there is allowed at the cap.
    await mailbox.store_message(hpk, messages[0][0], b"again", messages[0][2], LONG_TTL, cap)
    assert await mailbox.count(hpk) == cap
    # Deleting one frees a place.
    assert await mailbox.delete(hpk, [messages[1][0]]) == cap - 1
    await mailbox.store_message(hpk, extra_id, b"extra", extra_token, LONG_TTL, cap)
    assert await mailbox.count(hpk) == cap


@pytest_twisted.ensureDeferred
async def test_concurrent_stores_never_exceed_the_cap(store_factory):
    mailbox = store_factory.mailbox
    hpk = random_key()
    cap = 5

    async def attempt(i: int) -> bool:
        try:
            await mailbox.store_message(hpk, os.urandom(24), b"%d" % i, os.urandom(32),
                                        LONG_TTL, cap)
        except StoreFull:
            return False
        return True

    results = await both(*(attempt(i) for i in range(12)))
    assert results.count(True) == cap
    assert await mailbox.count(hpk) == cap


@pytest_twisted.ensureDeferred
async def test_delete_ignores_unknown_ids_and_returns_what_is_left(store_factory):
    mailbox = store_factory.mailbox
    hpk = random_key()
    assert await mailbox.delete(hpk, [os.urandom(24)]) == 0
    messages = await fill(mailbox, hpk, 4)
    left = await mailbox.delete(hpk, [messages[1][0], os.urandom(24), messages[3][0]])
    assert left == 2
    assert await mailbox.read(hpk, 0, 10) == [messages[0][1], messages[2][1]]
    assert await mailbox.message_ttl(messages[1][2]) == -2
    assert await mailbox.message_ttl(messages[0][2]) > 0
    assert await mailbox.delete(hpk, []) == 2
    assert await mailbox.delete(hpk, [messages[0][0], messages[2][0]]) == 0
    assert await mailbox.count(hpk) == 0
    assert await mailbox.read(hpk, 0, 10) == []


@pytest_twisted.ensureDeferred
async def test_message_ttl_counts_down_in_whole_seconds(store_factory, store_sleep):
    mailbox = store_factory.mailbox
    hpk = random_key()
    msg_id, token = os.urandom(24), os.urandom(32)
    await mailbox.store_message(hpk, msg_id, b"x", token, 100.0, 10)
    assert 99 <= await mailbox.message_ttl(token) <= 100
    await store_sleep(1.05)
    assert 98 <= await mailbox.message_ttl(token) <= 99
    assert await mailbox.message_ttl(os.urandom(32)) == -2


@pytest_twisted.ensureDeferred
async def test_messages_expire(store_factory, store_sleep):
    mailbox = store_factory.mailbox
    hpk = random_key()
    short = await fill(mailbox, hpk, 2, ttl=SHORT_TTL)
    long = await fill(mailbox, hpk, 1, ttl=LONG_TTL)
    short_later = await fill(mailbox, hpk, 1, ttl=SHORT_TTL)
    assert await mailbox.count(hpk) == 4
    await store_sleep(PAST_SHORT_TTL)
    assert await mailbox.message_ttl(short[0][2]) == -2
    assert await mailbox.message_ttl(short_later[0][2]) == -2
    assert await mailbox.count(hpk) == 1
    assert await mailbox.read(hpk, 0, 10) == [long[0][1]]
    # An expired message no longer counts against the cap.
    await mailbox.store_message(hpk, os.urandom(24), b"new", os.urandom(32), LONG_TTL, 2)
    assert await mailbox.read(hpk, 0, 10) == [long[0][1], b"new"]


@pytest_twisted.ensureDeferred
async def test_whole_mailbox_expires(store_factory, store_sleep):
    mailbox = store_factory.mailbox
    hpk = random_key()
    messages = await fill(mailbox, hpk, 3, ttl=SHORT_TTL)
    await store_sleep(PAST_SHORT_TTL)
    assert await mailbox.read(hpk, 0, 10) == []
    assert await mailbox.count(hpk) == 0
    assert await mailbox.delete(hpk, [messages[0][0]]) == 0
    assert await mailbox.message_ttl(messages[0][2]) == -2


# -- a command's session check, nonce claim and mailbox op in one step -----------------------


async def with_session(sessions) -> tuple[bytes, Session]:
    hpk, session = random_key(), Session(os.urandom(32), os.urandom(32))
    await sessions.put_session(hpk, session, LONG_TTL)
    return hpk, session


@pytest_twisted.ensureDeferred
async def test_command_claiming_nonce_runs_each_op(store_factory):
    sessions, mailbox = store_factory.sessions, store_factory.mailbox
    hpk, session = await with_session(sessions)
    run = sessions.run_command_claiming_nonce

    async def done(op):
        claim, result = await run(hpk, session, os.urandom(24), LONG_TTL, op)
        assert claim is Claim.DONE
        return result

    assert await done(None) is None
    assert await done(CountOp(hpk)) == 0
    token = os.urandom(32)
    assert await done(StoreMessageOp(hpk, b"id-1", b"record-1", token, LONG_TTL, 10,
                                     sender=hpk, client="192.0.2.7/32")) is None
    await mailbox.store_message(hpk, b"id-2", b"record-2", os.urandom(32), LONG_TTL, 10)
    assert await done(CountOp(hpk)) == 2
    assert await done(ReadOp(hpk, 0, 10)) == [b"record-1", b"record-2"]
    assert await done(ReadOp(hpk, 1, 1)) == [b"record-2"]
    assert await done(ReadOp(hpk, 5, 0)) == []
    assert 3500 <= await done(MessageTTLOp(token)) <= 3600
    assert await done(MessageTTLOp(os.urandom(32))) == -2
    assert await done(DeleteOp(hpk, [b"id-1", b"unknown"])) == 1
    assert await done(DeleteOp(hpk, [])) == 1
    assert await mailbox.read(hpk, 0, 10) == [b"record-2"]


@pytest_twisted.ensureDeferred
async def test_command_claiming_nonce_refuses_replays_and_other_sessions(store_factory):
    sessions, mailbox = store_factory.sessions, store_factory.mailbox
    hpk, session = await with_session(sessions)
    run = sessions.run_command_claiming_nonce
    nonce = os.urandom(24)

    def upload(msg_id: bytes) -> StoreMessageOp:
        return StoreMessageOp(hpk, msg_id, b"record", os.urandom(32), LONG_TTL, 10)

    # No session, or another one: nothing done, the nonce not claimed.
    other = Session(os.urandom(32), os.urandom(32))
    assert await run(random_key(), session, nonce, LONG_TTL, upload(b"a")) \
        == (Claim.NO_SESSION, None)
    assert await run(hpk, other, nonce, LONG_TTL, upload(b"a")) == (Claim.NO_SESSION, None)
    assert await mailbox.count(hpk) == 0
    assert (await run(hpk, session, nonce, LONG_TTL, upload(b"a")))[0] is Claim.DONE
    # The nonce is taken now, whichever way it is claimed next; a replay runs nothing.
    assert await run(hpk, session, nonce, LONG_TTL, upload(b"b")) == (Claim.REPLAYED, None)
    assert await sessions.claim_nonce(hpk, nonce, LONG_TTL) is False
    assert await sessions.get_session_claiming_nonce(hpk, nonce, LONG_TTL) == (session, False)
    assert await mailbox.read(hpk, 0, 10) == [b"record"]
    claimed = os.urandom(24)
    assert await sessions.claim_nonce(hpk, claimed, LONG_TTL) is True
    assert await run(hpk, session, claimed, LONG_TTL, CountOp(hpk)) == (Claim.REPLAYED, None)


@pytest_twisted.ensureDeferred
async def test_command_claiming_nonce_upload_refusals_raise(store_factory):
    sessions = store_factory.sessions
    hpk, session = await with_session(sessions)
    run = sessions.run_command_claiming_nonce
    for msg_id in (b"a", b"b"):
        op = StoreMessageOp(hpk, msg_id, b"record", os.urandom(32), LONG_TTL, 1)
        if msg_id == b"a":
            assert (await run(hpk, session, os.urandom(24), LONG_TTL, op))[0] is Claim.DONE
        else:
            with pytest.raises(StoreFull):
                await run(hpk, session, os.urandom(24), LONG_TTL, op)
    quota = MessageQuota(max_messages=10, client_upload_bytes=10, client_upload_window=60)
    op = StoreMessageOp(random_key(), b"c", b"x" * 11, os.urandom(32), LONG_TTL, quota,
                        client="192.0.2.7/32")
    with pytest.raises(StoreRateLimited):
        await run(hpk, session, os.urandom(24), LONG_TTL, op)


@pytest_twisted.ensureDeferred
async def test_concurrent_commands_with_one_nonce_run_once(store_factory):
    sessions, mailbox = store_factory.sessions, store_factory.mailbox
    hpk, session = await with_session(sessions)
    nonce = os.urandom(24)
    claims = await both(*(sessions.run_command_claiming_nonce(
        hpk, session, nonce, LONG_TTL,
        StoreMessageOp(hpk, bytes([i]), b"record", os.urandom(32), LONG_TTL, 100))
        for i in range(8)))
    assert sorted(claim.value for claim, _ in claims) == ["done"] + ["replayed"] * 7
    assert await mailbox.count(hpk) == 1


@pytest_twisted.ensureDeferred
async def test_finish_handshake_claiming_nonces(store_factory):
    sessions, mailbox = store_factory.sessions, store_factory.mailbox
    key, hpk = random_key(), random_key()
    await sessions.put_handshake(key, Handshake(os.urandom(32), os.urandom(32), os.urandom(32)),
                                 LONG_TTL)
    await mailbox.store_message(hpk, b"id", b"record", os.urandom(32), LONG_TTL, 10)
    session = Session(os.urandom(32), os.urandom(32))
    seen = os.urandom(24)
    assert await sessions.claim_nonce(hpk, seen, LONG_TTL) is True
    finish = sessions.finish_handshake_claiming_nonces
    # A replayed nonce finishes nothing: the handshake stays for a proper /prove.
    assert await finish(key, hpk, session, LONG_TTL, [os.urandom(24), seen], LONG_TTL) \
        == (Claim.REPLAYED, 0)
    assert await sessions.get_session(hpk) is None
    nonces = [os.urandom(24), os.urandom(24)]
    assert await finish(key, hpk, session, LONG_TTL, nonces, LONG_TTL) == (Claim.DONE, 1)
    assert await sessions.get_session(hpk) == session
    assert await sessions.get_handshake(key) is None
    assert all([not await sessions.claim_nonce(hpk, n, LONG_TTL) for n in nonces])
    assert await finish(key, hpk, session, LONG_TTL, [os.urandom(24)], LONG_TTL) \
        == (Claim.GONE, 0)


@pytest_twisted.ensureDeferred
async def test_replace_handshake_only_the_expected_one(store_factory):
    sessions = store_factory.sessions
    key = random_key()
    first = Handshake(os.urandom(32), os.urandom(32))
    verified = Handshake(first.client_token, first.relay_token, os.urandom(32))
    assert await sessions.replace_handshake(key, first, verified, LONG_TTL) is False
    assert await sessions.get_handshake(key) is None
    await sessions.put_handshake(key, first, LONG_TTL)
    assert await sessions.replace_handshake(key, first, verified, LONG_TTL) is True
    assert await sessions.get_handshake(key) == verified
    other = Handshake(first.client_token, first.relay_token, os.urandom(32))
    assert await sessions.replace_handshake(key, first, other, LONG_TTL) is False
    assert await sessions.get_handshake(key) == verified


@pytest_twisted.ensureDeferred
async def test_finish_handshake_expecting_another_does_nothing(store_factory):
    sessions = store_factory.sessions
    key, hpk = random_key(), random_key()
    stored = Handshake(os.urandom(32), os.urandom(32), os.urandom(32))
    await sessions.put_handshake(key, stored, LONG_TTL)
    session, nonce = Session(os.urandom(32), os.urandom(32)), os.urandom(24)
    other = Handshake(stored.client_token, stored.relay_token, os.urandom(32))
    finish = sessions.finish_handshake_claiming_nonces
    assert await finish(key, hpk, session, LONG_TTL, [nonce], LONG_TTL, expected=other) \
        == (Claim.GONE, 0)
    assert await sessions.get_handshake(key) == stored
    assert await finish(key, hpk, session, LONG_TTL, [nonce], LONG_TTL, expected=stored) \
        == (Claim.DONE, 0)  # the nonce was not claimed by the refused call
    assert await sessions.get_session(hpk) == session


# -- random operation sequences against a model ----------------------------------------------

_IDS = [bytes([i]) * 24 for i in range(5)]

_operations = st.lists(
    st.one_of(
        st.tuples(st.just("store"), st.sampled_from(_IDS), st.binary(max_size=40)),
        st.tuples(st.just("delete"), st.lists(st.sampled_from(_IDS), max_size=3)),
        st.tuples(st.just("read"), st.integers(0, 6), st.integers(0, 6)),
    ),
    max_size=12,
)


async def check_mailbox_against_model(mailbox, operations) -> None:
    hpk = random_key()  # a fresh mailbox per example
    cap = 4
    model: dict[bytes, bytes] = {}  # insertion order = download order
    for operation in operations:
        if operation[0] == "store":
            _, msg_id, record = operation
            token = msg_id + hpk[:8]
            if msg_id not in model and len(model) >= cap:
                with pytest.raises(StoreFull):
                    await mailbox.store_message(hpk, msg_id, record, token, LONG_TTL, cap)
            else:
                await mailbox.store_message(hpk, msg_id, record, token, LONG_TTL, cap)
                model.pop(msg_id, None)
                model[msg_id] = record
        elif operation[0] == "delete":
            for msg_id in operation[1]:
                model.pop(msg_id, None)
            assert await mailbox.delete(hpk, operation[1]) == len(model)
        else:
            _, start, count = operation
            assert await mailbox.read(hpk, start, count) == \
                list(model.values())[start:start + count]
        assert await mailbox.count(hpk) == len(model)
    for msg_id in _IDS:
        left = await mailbox.message_ttl(msg_id + hpk[:8])
        assert left >= LONG_TTL - 1 if msg_id in model else left == -2


test_memory_mailbox_matches_a_model = model_test("memory", _operations,
                                                 check_mailbox_against_model, "mailbox")
test_redis_mailbox_matches_a_model = model_test("redis", _operations,
                                                check_mailbox_against_model, "mailbox")


# -- quotas -----------------------------------------------------------------------------------
# A message is charged len(record) + MESSAGE_OVERHEAD to its mailbox, sender and client.

RECORD = b"r" * 100
CHARGE = len(RECORD) + MESSAGE_OVERHEAD


def quota(**limits) -> MessageQuota:
    return MessageQuota(**{"max_messages": 1000, **limits})


async def put(mailbox, hpk: bytes, limits: MessageQuota, *, sender: bytes = b"",
              client: str = "", record: bytes = RECORD, msg_id: bytes | None = None,
              token: bytes | None = None, ttl: float = LONG_TTL) -> tuple[bytes, bytes]:
    msg_id, token = msg_id or os.urandom(24), token or os.urandom(32)
    await mailbox.store_message(hpk, msg_id, record, token, ttl, limits, sender=sender,
                                client=client)
    return msg_id, token


async def refused(mailbox, hpk: bytes, limits: MessageQuota, error=StoreFull, **kwargs) -> None:
    """The upload is refused and leaves no trace (no token, the mailbox as it was)."""
    before = await mailbox.read(hpk, 0, 1000)
    token = os.urandom(32)
    with pytest.raises(error):
        await put(mailbox, hpk, limits, token=token, **kwargs)
    assert await mailbox.message_ttl(token) == -2
    assert await mailbox.read(hpk, 0, 1000) == before


@pytest_twisted.ensureDeferred
async def test_mailbox_byte_quota(store_factory):
    mailbox, hpk = store_factory.mailbox, random_key()
    limits = quota(mailbox_max_bytes=3 * CHARGE)
    ids = [(await put(mailbox, hpk, limits))[0] for _ in range(3)]
    await refused(mailbox, hpk, limits)
    await refused(mailbox, hpk, limits, record=b"")  # the overhead alone does not fit
    # Other mailboxes have their own quota.
    await put(mailbox, random_key(), limits)
    assert await mailbox.delete(hpk, ids[:1]) == 2
    await put(mailbox, hpk, limits)
    assert await mailbox.count(hpk) == 3


@pytest_twisted.ensureDeferred
async def test_sender_quota_spans_mailboxes_and_deletes_release_it(store_factory):
    mailbox, sender = store_factory.mailbox, random_key()
    limits = quota(sender_max_bytes=2 * CHARGE)
    first, second, third = random_key(), random_key(), random_key()
    first_id, _ = await put(mailbox, first, limits, sender=sender)
    await put(mailbox, second, limits, sender=sender)
    await refused(mailbox, third, limits, sender=sender)
    # Another sender, or an upload charged to no sender, is not affected.
    await put(mailbox, third, limits, sender=random_key())
    await put(mailbox, third, limits)
    # The recipient deleting one of the sender's messages frees its share.
    assert await mailbox.delete(first, [first_id]) == 0
    await put(mailbox, third, limits, sender=sender)
    await refused(mailbox, first, limits, sender=sender)


@pytest_twisted.ensureDeferred
async def test_sender_and_client_message_caps(store_factory):
    mailbox = store_factory.mailbox
    sender, client = random_key(), "192.0.2.1/32"
    await put(mailbox, random_key(), quota(sender_max_messages=1), sender=sender)
    await refused(mailbox, random_key(), quota(sender_max_messages=1), sender=sender)
    await put(mailbox, random_key(), quota(client_max_messages=2), client=client)
    await put(mailbox, random_key(), quota(client_max_messages=2), client=client)
    await refused(mailbox, random_key(), quota(client_max_messages=2), client=client)
    await put(mailbox, random_key(), quota(client_max_messages=2), client="192.0.2.2/32")


@pytest_twisted.ensureDeferred
async def test_client_quota_spans_identities(store_factory):
    mailbox, client = store_factory.mailbox, "2001:db8:1:2::/64"
    limits = quota(client_max_bytes=2 * CHARGE, sender_max_bytes=10 * CHARGE)
    await put(mailbox, random_key(), limits, sender=random_key(), client=client)
    hpk = random_key()
    msg_id, _ = await put(mailbox, hpk, limits, sender=random_key(), client=client)
    await refused(mailbox, random_key(), limits, sender=random_key(), client=client)
    await put(mailbox, random_key(), limits, sender=random_key(), client="2001:db8:1:3::/64")
    await mailbox.delete(hpk, [msg_id])
    await put(mailbox, random_key(), limits, sender=random_key(), client=client)


@pytest_twisted.ensureDeferred
async def test_replacing_charges_only_the_difference(store_factory):
    mailbox, hpk, sender, client = store_factory.mailbox, random_key(), random_key(), "c"
    limits = quota(mailbox_max_bytes=2 * CHARGE, sender_max_bytes=2 * CHARGE,
                   client_max_bytes=2 * CHARGE, sender_max_messages=2, client_max_messages=2,
                   max_messages=2)
    charged = {"sender": sender, "client": client}
    msg_id, token = await put(mailbox, hpk, limits, **charged)
    await put(mailbox, hpk, limits, **charged)
    # Every quota is used up exactly, yet a same-sized or smaller replacement fits...
    await put(mailbox, hpk, limits, msg_id=msg_id, token=token, **charged)
    await put(mailbox, hpk, limits, msg_id=msg_id, token=token, record=b"small", **charged)
    # ... and a larger one only up to what the smaller one freed.
    await put(mailbox, hpk, limits, msg_id=msg_id, token=token, **charged)
    await refused(mailbox, hpk, limits, msg_id=msg_id, record=RECORD + b"x", **charged)
    assert await mailbox.read(hpk, 0, 10) == [RECORD, RECORD]


@pytest_twisted.ensureDeferred
async def test_replacing_moves_the_charge_to_the_new_sender(store_factory):
    mailbox, hpk, first, second = store_factory.mailbox, random_key(), random_key(), random_key()
    limits = quota(sender_max_bytes=CHARGE)
    msg_id, _ = await put(mailbox, hpk, limits, sender=first)
    await put(mailbox, hpk, limits, sender=second, msg_id=msg_id)
    await put(mailbox, random_key(), limits, sender=first)  # first's share is free again
    await refused(mailbox, random_key(), limits, sender=second)


@pytest_twisted.ensureDeferred
async def test_expiry_releases_every_charge(store_factory, store_sleep):
    mailbox, sender, client = store_factory.mailbox, random_key(), "198.51.100.9/32"
    limits = quota(sender_max_bytes=CHARGE, client_max_messages=1, mailbox_max_bytes=CHARGE)
    hpk = random_key()
    await put(mailbox, hpk, limits, sender=sender, client=client, ttl=SHORT_TTL)
    await refused(mailbox, random_key(), limits, sender=sender)
    await refused(mailbox, random_key(), limits, client=client)
    await refused(mailbox, hpk, limits)
    await store_sleep(PAST_SHORT_TTL)
    # No read or sweep of the first mailbox in between: the accounts notice by themselves.
    await put(mailbox, random_key(), limits, sender=sender)
    await put(mailbox, random_key(), limits, client=client)
    await put(mailbox, hpk, limits)


@pytest_twisted.ensureDeferred
async def test_client_upload_rate(store_factory, store_sleep):
    mailbox, client = store_factory.mailbox, "203.0.113.0/32"
    window = 2.0
    limits = quota(client_upload_bytes=3 * len(RECORD), client_upload_window=window)
    # Start early in a window (Redis counts windows on its clock, which is this machine's).
    await store_sleep(window - time.time() % window + 0.05)
    hpk = random_key()
    for _ in range(3):
        await put(mailbox, hpk, limits, client=client)
    await refused(mailbox, hpk, limits, StoreRateLimited, client=client)
    # Replacing costs rate too (it is a write), other clients have their own.
    await put(mailbox, random_key(), limits, client="203.0.113.1/32")
    await store_sleep(window)
    await put(mailbox, hpk, limits, client=client)
    assert await mailbox.count(hpk) == 4


# Random uploads and deletes by two senders from two clients into two mailboxes, against a
# model of every quota (the rate is off: it depends on time, tested above).
_SENDERS = [bytes([i]) * 32 for i in (1, 2)]
_CLIENTS = ["192.0.2.1/32", "192.0.2.2/32"]
_MAILBOXES = [0, 1]

_quota_store = st.tuples(st.just("store"), st.sampled_from(_MAILBOXES), st.sampled_from(_IDS),
                         st.integers(0, 400), st.sampled_from([0, 1]), st.sampled_from([0, 1]))
_quota_operations = st.lists(
    st.one_of(
        _quota_store, _quota_store, _quota_store,
        st.tuples(st.just("delete"), st.sampled_from(_MAILBOXES),
                  st.lists(st.sampled_from(_IDS), max_size=2)),
    ),
    min_size=4, max_size=24,
)

# Tight enough that each limit binds on its own in some examples (records of 0-400 bytes).
_MODEL_QUOTA = MessageQuota(max_messages=3, mailbox_max_bytes=1200, sender_max_messages=3,
                            sender_max_bytes=1000, client_max_messages=4, client_max_bytes=900)


def _model_refuses(model: dict, box: int, msg_id: bytes, size: int, sender: bytes,
                   client: str) -> bool:
    q = _MODEL_QUOTA
    replaced = model.get((box, msg_id))

    def totals(match) -> tuple[int, int]:
        rows = [row for key, row in model.items() if match(key, row) and key != (box, msg_id)]
        return len(rows) + 1, sum(row[0] for row in rows) + size

    count, used = totals(lambda key, row: key[0] == box)
    if (replaced is None and count > q.max_messages) or used > q.mailbox_max_bytes:
        return True
    count, used = totals(lambda key, row: row[1] == sender)
    if count > q.sender_max_messages or used > q.sender_max_bytes:
        return True
    count, used = totals(lambda key, row: row[2] == client)
    return count > q.client_max_messages or used > q.client_max_bytes


async def check_quotas_against_model(mailbox, operations) -> None:
    hpks = [random_key(), random_key()]
    senders = [random_key(), random_key()]  # fresh accounts per example
    clients = [f"{os.urandom(4).hex()}/{i}" for i in range(2)]
    model: dict[tuple[int, bytes], tuple[int, bytes, str, bytes]] = {}
    for operation in operations:
        if operation[0] == "store":
            _, box, msg_id, length, s, c = operation
            record = bytes([length % 256]) * length
            size = length + MESSAGE_OVERHEAD
            if _model_refuses(model, box, msg_id, size, senders[s], clients[c]):
                with pytest.raises(StoreFull):
                    await put(mailbox, hpks[box], _MODEL_QUOTA, sender=senders[s],
                              client=clients[c], record=record, msg_id=msg_id)
            else:
                await put(mailbox, hpks[box], _MODEL_QUOTA, sender=senders[s],
                          client=clients[c], record=record, msg_id=msg_id)
                model.pop((box, msg_id), None)
                model[(box, msg_id)] = (size, senders[s], clients[c], record)
        else:
            _, box, msg_ids = operation
            for msg_id in msg_ids:
                model.pop((box, msg_id), None)
            await mailbox.delete(hpks[box], msg_ids)
        for box in _MAILBOXES:
            assert await mailbox.read(hpks[box], 0, 10) == \
                [row[3] for key, row in model.items() if key[0] == box]


test_memory_quotas_match_a_model = model_test("memory", _quota_operations,
                                              check_quotas_against_model, "mailbox", 60)
test_redis_quotas_match_a_model = model_test("redis", _quota_operations,
                                             check_quotas_against_model, "mailbox", 60)
