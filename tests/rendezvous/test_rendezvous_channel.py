"""The channel state machine, the registry (memory store, injected clock) and the parsers."""

from __future__ import annotations

import base64
import json
import os

import attrs
import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from relay.config import RendezvousConfig
from relay.rendezvous import channel as sm
from relay.rendezvous.channel import Write
from relay.rendezvous.errors import ChannelError
from relay.rendezvous.http import http_status
from relay.rendezvous.registry import ChannelRegistry
from relay.rendezvous.requests import ChannelRequest, JoinRequest, parse_channel, parse_join
from relay.store.errors import StoreFull
from relay.store.memory.channels import MemoryChannelStore

A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"
X, Y = b"x" * 33, b"y" * 33
TAG1, TAG2 = b"1" * 32, b"2" * 32


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fresh(now: float = 0.0) -> sm.Channel:
    return sm.new_channel("abcd1234", "ed25519", "node", "h:1", b"S" * 32, A, now, 300)


def status(fn, *args) -> int:
    with pytest.raises(ChannelError) as e:
        fn(*args)
    return http_status(e.value)


# -- the pure state machine -------------------------------------------------------------
def test_full_sequence_and_write_once():
    ch = sm.join_recipient(fresh(), b"R" * 32, B, 1)
    assert sm.authenticate(ch, b"S" * 32, A, 1) == "sender"
    assert sm.authenticate(ch, b"R" * 32, B, 1) == "recipient"
    ch = sm.apply_write(ch, "sender", Write(x=X), 1)
    assert status(sm.apply_write, ch, "sender", Write(x=X), 1) == 409
    ch = sm.apply_write(ch, "recipient", Write(y=Y, hh_k=TAG1), 1)
    assert status(sm.apply_write, ch, "recipient", Write(y=Y, hh_k=TAG1), 1) == 409
    ch = sm.apply_write(ch, "sender", Write(h_k=TAG2), 1)
    assert status(sm.apply_write, ch, "sender", Write(h_k=TAG2), 1) == 409
    state = ch.public_state()
    assert base64.b64decode(state["x"]) == X and base64.b64decode(state["h_k"]) == TAG2
    assert not state["stapled"] and not state["closed"]
    assert sm.apply_write(ch, "sender", Write(), 1) is None


def test_roles_and_order():
    ch = sm.join_recipient(fresh(), b"R" * 32, B, 1)
    assert status(sm.apply_write, ch, "recipient", Write(x=X), 1) == 403
    assert status(sm.apply_write, ch, "recipient", Write(y=Y, hh_k=TAG1), 1) == 409  # before x
    ch = sm.apply_write(ch, "sender", Write(x=X), 1)
    assert status(sm.apply_write, ch, "sender", Write(y=Y, hh_k=TAG1), 1) == 403
    assert status(sm.apply_write, ch, "sender", Write(h_k=TAG2), 1) == 409  # before y
    ch = sm.apply_write(ch, "recipient", Write(y=Y, hh_k=TAG1), 1)
    assert status(sm.apply_write, ch, "recipient", Write(h_k=TAG2), 1) == 403


def test_recipient_role_taken_and_third_address():
    ch = sm.join_recipient(fresh(), b"R" * 32, B, 1)
    assert status(sm.join_recipient, ch, b"Q" * 32, B, 1) == 409
    assert status(sm.join_recipient, ch, b"Q" * 32, C, 1) == 403
    # a third address learns nothing, not even with a valid uuid
    assert status(sm.authenticate, ch, b"S" * 32, C, 1) == 403
    assert status(sm.authenticate, ch, b"W" * 32, A, 1) == 401
    # both peers on one address are fine
    same = sm.join_recipient(fresh(), b"R" * 32, A, 1)
    assert same.addresses == (A,)


def test_wrong_uuid_before_recipient_joined():
    ch = fresh()
    assert status(sm.authenticate, ch, bytes(32), A, 1) == 401


def test_expiry_and_close():
    ch = fresh(0)
    assert status(sm.authenticate, ch, b"S" * 32, A, 300) == 404
    assert status(sm.join_recipient, ch, b"R" * 32, B, 301) == 404
    closed = sm.apply_write(ch, "sender", Write(close=True), 10)
    assert closed.closed and closed.expires_at == 10 + sm.CLOSED_GRACE
    assert sm.apply_write(closed, "sender", Write(close=True), 11) is None
    assert status(sm.apply_write, closed, "sender", Write(x=X), 11) == 409
    assert status(sm.join_recipient, closed, b"R" * 32, B, 11) == 404
    assert status(sm.staple_check, closed, "sender", b"S" * 32, A, "node", 11) == 404


def test_staple_rules():
    ch = sm.join_recipient(fresh(), b"R" * 32, B, 1)
    assert sm.staple_check(ch, "sender", b"S" * 32, A, "node", 1) is ch
    assert status(sm.staple_check, ch, "recipient", b"S" * 32, A, "node", 1) == 401
    assert status(sm.staple_check, ch, "sender", b"S" * 32, C, "node", 1) == 403
    assert status(sm.staple_check, ch, "sender", b"S" * 32, A, "other", 1) == 421
    stapled = sm.mark_stapled(ch, 2)
    assert stapled.stapled
    assert status(sm.mark_stapled, stapled, 2) == 409
    assert status(sm.staple_check, stapled, "sender", b"S" * 32, A, "node", 2) == 409


def test_record_round_trip():
    ch = sm.apply_write(sm.join_recipient(fresh(), b"R" * 32, B, 1), "sender", Write(x=X), 1)
    assert sm.Channel.from_record(ch.to_record(), 7) == attrs.evolve(ch, version=7)


# -- the registry over the memory store ------------------------------------------------
def make_registry(**settings) -> tuple[ChannelRegistry, Clock, MemoryChannelStore]:
    clock = Clock()
    store = MemoryChannelStore(clock.seconds)
    config = RendezvousConfig(**settings)
    return ChannelRegistry(config, store, clock, node_id="node"), clock, store


NO_WRITE = Write()


def request(joined, uuid, write=NO_WRITE, wait=0.0, since=None) -> ChannelRequest:
    return ChannelRequest(channel=joined.name, uuid=uuid, write=write, wait=wait, since=since)


@pytest_twisted.ensureDeferred
async def test_registry_join_write_and_expiry():
    registry, clock, store = make_registry(channel_ttl=120)
    ch, s_uuid = await registry.join(JoinRequest("sender", None, "ed25519"), A, "h:1")
    assert sm.valid_name(ch.name) and ch.staple == "h:1" and ch.version == 1
    with pytest.raises(ChannelError) as e:
        await registry.join(JoinRequest("sender", ch.name, "ed25519"), A, "h:1")
    assert http_status(e.value) == 409
    ch2, r_uuid = await registry.join(JoinRequest("recipient", ch.name, "ed25519"), B, "h:2")
    assert ch2.staple == "h:1" and ch2.version == 2
    with pytest.raises(ChannelError) as e:
        await registry.join(JoinRequest("recipient", ch.name, "ed25519"), C, "h:1")
    assert http_status(e.value) == 403
    # a refused write stores nothing
    with pytest.raises(ChannelError):
        await registry.act(request(ch, r_uuid, Write(x=X)), B)
    assert (await registry.load(ch.name)).version == 2
    state = await registry.act(request(ch, s_uuid, Write(x=X)), A)
    assert state.x == X and state.version == 3
    clock.advance(121)
    with pytest.raises(ChannelError) as e:
        await registry.act(request(ch, s_uuid), A)
    assert http_status(e.value) == 404
    store.sweep()
    assert len(store.channels) == 0


@pytest_twisted.ensureDeferred
async def test_registry_unknown_channel_and_rate_limit():
    registry, clock, _ = make_registry(joins_per_ip_per_minute=3)
    with pytest.raises(ChannelError) as e:
        await registry.join(JoinRequest("recipient", "nope1234", "ed25519"), A, "h:1")
    assert http_status(e.value) == 404
    for _ in range(2):
        await registry.join(JoinRequest("sender", None, "ed25519"), A, "h:1")
    with pytest.raises(ChannelError) as e:
        await registry.join(JoinRequest("sender", None, "ed25519"), A, "h:1")
    assert http_status(e.value) == 429
    await registry.join(JoinRequest("sender", None, "ed25519"), B, "h:1")  # per address
    clock.advance(60)
    await registry.join(JoinRequest("sender", None, "ed25519"), A, "h:1")


@pytest_twisted.ensureDeferred
async def test_registry_channel_cap():
    registry, clock, _ = make_registry(max_channels=2, channel_ttl=10)
    for address in (A, B):
        await registry.join(JoinRequest("sender", None, "ed25519"), address, "h:1")
    with pytest.raises(StoreFull):
        await registry.join(JoinRequest("sender", None, "ed25519"), C, "h:1")
    clock.advance(10)
    await registry.join(JoinRequest("sender", None, "ed25519"), C, "h:1")


@pytest_twisted.ensureDeferred
async def test_long_poll_wakes_on_change_and_times_out():
    registry, clock, _ = make_registry(max_wait=30)
    ch, s_uuid = await registry.join(JoinRequest("sender", None, "ed25519"), A, "h:1")
    _, r_uuid = await registry.join(JoinRequest("recipient", ch.name, "ed25519"), B, "h:1")
    waiting = Deferred.fromCoroutine(registry.act(request(ch, r_uuid, wait=30), B))
    assert not waiting.called and registry.waiting() == 1
    await registry.act(request(ch, s_uuid, Write(x=X)), A)
    result = await waiting
    assert result.x == X
    assert registry.waiting() == 0 and not clock.getDelayedCalls()
    # nothing changes: the poll ends after its wait with the same state
    waiting = Deferred.fromCoroutine(registry.act(request(ch, r_uuid, wait=5), B))
    clock.advance(4.9)
    assert not waiting.called
    clock.advance(0.2)
    assert (await waiting).version == result.version
    # since: an older version answers at once
    assert (await registry.act(request(ch, r_uuid, wait=5, since=1), B)).x == X
    # closing wakes the waiter too
    waiting = Deferred.fromCoroutine(registry.act(request(ch, s_uuid, wait=30), A))
    await registry.act(request(ch, r_uuid, Write(close=True)), B)
    assert (await waiting).closed


@pytest_twisted.ensureDeferred
async def test_long_poll_cancel_cleans_up():
    registry, clock, _ = make_registry()
    ch, s_uuid = await registry.join(JoinRequest("sender", None, "ed25519"), A, "h:1")
    waiting = Deferred.fromCoroutine(registry.act(request(ch, s_uuid, wait=30), A))
    waiting.addErrback(lambda f: None)
    waiting.cancel()
    assert registry.waiting() == 0 and not clock.getDelayedCalls()


# -- parsers: hypothesis ---------------------------------------------------------------
def valid_channel_body() -> dict:
    return {"channel": "abcd1234", "uuid": b64(os.urandom(32)), "x": b64(X)}


def test_parse_examples():
    assert parse_join(b'{"role":"sender"}') == JoinRequest("sender", None, "ed25519")
    assert parse_join(b'{"role":"recipient","channel":"ab12"}').channel == "ab12"
    for body in (b'{"role":"recipient"}', b'{"role":"x"}', b"[]", b"", b"\xff",
                 b'{"role":"sender","curve":"p256"}', b'{"role":"sender","extra":1}',
                 b'{"role":"sender","channel":"AB-12"}'):
        assert status(parse_join, body) == 400
    ok = parse_channel(json.dumps(valid_channel_body()).encode(), 30)
    assert ok.write.x == X and ok.wait == 0
    assert parse_channel(json.dumps({**valid_channel_body(), "wait": 99}).encode(), 30).wait == 30
    bad = [{"x": b64(b"x" * 32)}, {"x": "not base64!"}, {"y": b64(Y)}, {"hh_k": b64(TAG1)},
           {"h_k": b64(TAG1), "close": True}, {"close": False}, {"wait": -1}, {"wait": "1"},
           {"since": -1}, {"uuid": b64(b"u" * 31)}, {"uuid": None}, {"x": b64(X) + "\n"}]
    for change in bad:
        body = {**valid_channel_body(), **change}
        if change.get("uuid", 1) is None:
            del body["uuid"]
        assert status(parse_channel, json.dumps(body).encode(), 30) == 400, change
    assert status(parse_channel, b'{"channel":"abcd","uuid":"' + b"A" * 43 + b'=","wait":NaN}',
                  30) == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                       children, max_size=4),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["channel", "uuid", "x", "y", "hh_k", "h_k", "close",
                                        "wait", "since", "role", "curve", "junk"]),
                       json_values, max_size=8))
def test_parsers_never_crash_on_random_objects(data):
    body = json.dumps(data).encode()
    for parse in (parse_join, lambda b: parse_channel(b, 30)):
        try:
            parse(body)
        except ChannelError as e:
            assert http_status(e) == 400


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 200))
def test_parsers_never_crash_on_mutated_bodies(noise, position):
    body = json.dumps(valid_channel_body()).encode()
    mutated = body[:position] + noise + body[position + len(noise):]
    for parse in (parse_join, lambda b: parse_channel(b, 30)):
        try:
            parse(mutated)
        except ChannelError as e:
            assert http_status(e) == 400


def test_every_kind_of_refusal_has_its_http_status():
    from relay.rendezvous import errors
    from relay.rendezvous.http import HTTP_STATUS

    kinds = {k for k in vars(errors).values()
             if isinstance(k, type) and issubclass(k, ChannelError) and k is not ChannelError}
    assert kinds == set(HTTP_STATUS)
    # The state machine knows no HTTP: its errors carry a message, not a status.
    assert not hasattr(errors.UnknownChannel("x"), "status")
