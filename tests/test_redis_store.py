"""What only the Redis store has: its keys and TTLs, URLs and auth, error mapping, scripts."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from relay.config import ConfigError, MailboxConfig, RelayConfig, StoreConfig
from relay.store import open_store
from relay.store.errors import StoreFull, StoreUnavailable
from relay.store.interfaces.sessions import Handshake, Session
from relay.store.quota import MessageQuota
from relay.store.redis import RedisBackend
from relay.store.redis.address import RedisAddress, parse_redis_url
from relay.store.redis.codec import (
    CorruptRecord,
    decode_handshake,
    decode_session,
    encode_handshake,
    encode_session,
)
from relay.store.redis.keys import KeyNames
from tests.redis_server import RedisServer

LONG_TTL = 3600.0


@pytest.fixture(scope="module")
def private_redis():
    """A password-protected server of this module's own, for tests that reconfigure Redis."""
    server = RedisServer(password="pass word/?@")
    server.start()
    try:
        yield server
    finally:
        server.close()


async def started(url: str, reactor, **settings):
    store = open_store(RelayConfig(store=StoreConfig(url=url, **settings)), reactor)
    store.service.startService()
    return store


@pytest.fixture
def redis_url(redis_server):
    redis_server.flush()
    return redis_server.url


@pytest_twisted.async_yield_fixture
async def redis_store(redis_url):
    from twisted.internet import reactor

    store = await started(redis_url, reactor)
    try:
        yield store
    finally:
        await store.service.stopService()


@pytest_twisted.async_yield_fixture
async def backend(redis_url):
    from twisted.internet import reactor

    backend = RedisBackend(StoreConfig(url=redis_url), reactor)
    service = backend.make_service()
    service.startService()
    try:
        yield backend
    finally:
        await service.stopService()


# -- keys and TTLs ----------------------------------------------------------------------------


def test_keys_are_namespaced_and_binary_parts_encoded():
    from twisted.internet import reactor

    backend = RedisBackend(StoreConfig(url="redis://127.0.0.1:1"), reactor)
    assert backend.key("mailbox", b"\x00:\xff", "order") == "relay:mailbox:ADr_:order"
    assert backend.key("token", b"") == "relay:token:"
    names = KeyNames()
    assert names.mailbox(b"\x00:\xff")[0] == "relay:{i.ADr_}:mbox:order"
    assert names.client_account("2001:db8::/64")[0].startswith("relay:{c.")
    assert "{" not in names.token(b"{}") and names.token(b"") == "relay:token:"


@pytest_twisted.ensureDeferred
async def test_every_key_has_a_ttl(redis_store, redis_server):
    sessions, mailbox = redis_store.sessions, redis_store.mailbox
    hpk = os.urandom(32)
    await sessions.put_handshake(os.urandom(32), Handshake(b"c", b"r", b"s"), LONG_TTL)
    await sessions.put_session(hpk, Session(b"sk", b"pk"), LONG_TTL)
    await sessions.claim_nonce(os.urandom(32), os.urandom(24), LONG_TTL)
    ids = [os.urandom(24) for _ in range(4)]
    quota = MessageQuota.from_config(MailboxConfig())
    charged = {"sender": os.urandom(32), "client": "192.0.2.7/32"}
    for msg_id in ids:
        await mailbox.store_message(hpk, msg_id, b"r", os.urandom(32), LONG_TTL, quota, **charged)
    await mailbox.store_message(hpk, ids[0], b"again", os.urandom(32), 60.0, quota, **charged)
    await mailbox.delete(hpk, ids[1:2])
    keys = redis_server.keys()
    # handshake, session, nonce; mailbox; token pointers; sender and client accounts; rate
    assert len(keys) == 3 + 5 + 3 + 2 + 2 + 1
    for key in keys:
        assert key.startswith(b"relay:")
        assert redis_server.command("PTTL", key) > 0, key


@pytest_twisted.ensureDeferred
async def test_mailbox_keys_live_as_long_as_the_longest_message(redis_store, redis_server):
    mailbox = redis_store.mailbox
    hpk = os.urandom(32)
    await mailbox.store_message(hpk, b"a" * 24, b"r", os.urandom(32), 100.0, 10)
    await mailbox.store_message(hpk, b"b" * 24, b"r", os.urandom(32), 1000.0, 10)
    for key in redis_server.keys():
        if b":mbox:" in key:
            assert 990_000 < redis_server.command("PTTL", key) <= 1_000_000
    await mailbox.delete(hpk, [b"a" * 24, b"b" * 24])
    assert redis_server.keys() == []


@pytest_twisted.ensureDeferred
async def test_account_keys_live_as_long_as_their_longest_charge(redis_store, redis_server):
    mailbox, sender = redis_store.mailbox, os.urandom(32)
    quota = MessageQuota.from_config(MailboxConfig())
    first, second = os.urandom(32), os.urandom(32)
    await mailbox.store_message(first, b"a" * 24, b"r", os.urandom(32), 1000.0, quota,
                                sender=sender)
    await mailbox.store_message(second, b"b" * 24, b"r", os.urandom(32), 100.0, quota,
                                sender=sender)
    accounts = [key for key in redis_server.keys() if b":acct:" in key]
    assert len(accounts) == 2
    for key in accounts:
        assert 990_000 < redis_server.command("PTTL", key) <= 1_000_000
    await mailbox.delete(first, [b"a" * 24])
    for key in accounts:
        assert 90_000 < redis_server.command("PTTL", key) <= 100_000
    await mailbox.delete(second, [b"b" * 24])
    assert redis_server.keys() == []


# -- URLs, auth, databases --------------------------------------------------------------------


@pytest.mark.parametrize("url, address", [
    ("redis://localhost", RedisAddress(host="localhost")),
    ("redis://10.0.0.1:6380/2", RedisAddress(host="10.0.0.1", port=6380, db=2)),
    ("redis://:p%40ss@h/1", RedisAddress(host="h", db=1, password="p@ss")),
    ("redis://user:pw@h:1?db=4", RedisAddress(host="h", port=1, db=4, username="user",
                                               password="pw")),
    ("unix:///run/redis.sock", RedisAddress(socket_path="/run/redis.sock")),
    ("unix://:pw@/run/redis.sock?db=3", RedisAddress(socket_path="/run/redis.sock", db=3,
                                                      password="pw")),
])
def test_parse_redis_url(url, address):
    assert parse_redis_url(url) == address


@pytest.mark.parametrize("url", [
    "redis://", "redis://h:notaport", "redis://h/x", "redis://h/-1", "unix://", "http://h",
    "unix:///s?db=x",
])
def test_bad_redis_urls_are_config_errors(url):
    with pytest.raises(ConfigError):
        parse_redis_url(url)


def test_the_password_is_not_in_the_address_repr():
    assert "secret" not in repr(parse_redis_url("redis://:secret@h"))


@pytest.mark.parametrize("via", ["tcp", "unix"])
@pytest_twisted.ensureDeferred
async def test_connects_with_password_and_database(private_redis, via):
    from twisted.internet import reactor

    url = private_redis.url if via == "tcp" else private_redis.unix_url
    url = url.replace("/0", "/5") if via == "tcp" else url.replace("db=0", "db=5")
    store = await started(url, reactor)
    try:
        nonce = os.urandom(24)
        assert await store.sessions.claim_nonce(b"h" * 32, nonce, LONG_TTL)
        assert not await store.sessions.claim_nonce(b"h" * 32, nonce, LONG_TTL)
        assert len(private_redis.keys(db=5)) == 1
        assert private_redis.keys(db=0) == []
    finally:
        await store.service.stopService()
        private_redis.flush()


@pytest_twisted.ensureDeferred
async def test_wrong_password_fails_fast(private_redis):
    from twisted.internet import reactor

    url = f"redis://:wrong@127.0.0.1:{private_redis.port}"
    store = await started(url, reactor, operation_timeout=1.0, pool_size=2)
    try:
        with pytest.raises(StoreUnavailable):
            await store.sessions.claim_nonce(os.urandom(32), os.urandom(24), LONG_TTL)
    finally:
        await store.service.stopService()


# -- errors -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_out_of_memory_is_store_full_and_stores_nothing(private_redis):
    from twisted.internet import reactor

    store = await started(private_redis.url, reactor)
    info = private_redis.command("INFO", "memory").decode()
    used = int(next(line.split(":")[1] for line in info.split("\r\n")
                    if line.startswith("used_memory:")))
    private_redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    private_redis.command("CONFIG", "SET", "maxmemory", used + 2_000_000)
    try:
        hpk = os.urandom(32)
        stored = 0
        with pytest.raises(StoreFull):
            for _ in range(1000):
                await store.mailbox.store_message(hpk, os.urandom(24), os.urandom(20_000),
                                                  os.urandom(32), LONG_TTL, 10_000)
                stored += 1
        assert stored > 0
        assert await store.mailbox.count(hpk) == stored
    finally:
        private_redis.command("CONFIG", "SET", "maxmemory", 0)
        await store.service.stopService()
        private_redis.flush()


@pytest_twisted.ensureDeferred
async def test_redis_error_replies_are_store_unavailable(backend):
    with pytest.raises(StoreUnavailable):
        await backend.run(lambda redis: redis.execute_command("NO-SUCH-COMMAND"))
    await backend.run(lambda redis: redis.execute_command("SET", backend.key("s"), "x",
                                                          "PX", 10_000))
    with pytest.raises(StoreUnavailable):
        await backend.run(lambda redis: redis.execute_command("HGET", backend.key("s"), "f"))
    with pytest.raises(StoreUnavailable):
        await backend.script("return redis.error_reply('no')", [], [])


@pytest_twisted.ensureDeferred
async def test_exceptions_of_the_callers_own_pass_through(backend):
    def broken(redis):
        raise KeyError("mine")

    with pytest.raises(KeyError):
        await backend.run(broken)


@pytest_twisted.ensureDeferred
async def test_run_before_start_and_after_stop_is_unavailable(redis_url):
    from twisted.internet import reactor

    backend = RedisBackend(StoreConfig(url=redis_url), reactor)
    with pytest.raises(StoreUnavailable):
        await backend.run(lambda redis: redis.ping())
    service = backend.make_service()
    service.startService()
    assert await backend.run(lambda redis: redis.ping()) in ("PONG", b"PONG")  # bytes with hiredis
    await service.stopService()
    with pytest.raises(StoreUnavailable):
        await backend.run(lambda redis: redis.ping())


@pytest_twisted.ensureDeferred
async def test_corrupt_session_records_are_store_unavailable(redis_store, redis_server):
    key = os.urandom(32)
    await redis_store.sessions.put_handshake(key, Handshake(b"c", b"r"), LONG_TTL)
    (name,) = redis_server.keys()
    redis_server.command("SET", name, b"\x07garbage", "PX", 10_000)
    with pytest.raises(StoreUnavailable):
        await redis_store.sessions.get_handshake(key)


# -- scripts and persistence ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_scripts_survive_script_flush(backend, redis_server):
    source = "return ARGV[1] .. KEYS[1]"
    assert await backend.script(source, ["k"], [b"v"]) == b"vk"
    redis_server.command("SCRIPT", "FLUSH")
    assert await backend.script(source, ["k"], [b"v"]) == b"vk"
    backend.register_script("concat", source)
    assert await backend.script("concat", ["b"], [b"a"]) == b"ab"


@pytest_twisted.ensureDeferred
async def test_acknowledged_writes_are_in_redis(redis_url):
    """What a relay has acknowledged outlives it: a new relay process reads it back."""
    from twisted.internet import reactor

    hpk, token = os.urandom(32), os.urandom(32)
    first = await started(redis_url, reactor)
    await first.mailbox.store_message(hpk, os.urandom(24), b"kept", token, LONG_TTL, 10)
    await first.sessions.put_session(hpk, Session(b"sk", b"pk"), LONG_TTL)
    await first.service.stopService()
    second = await started(redis_url, reactor)
    try:
        assert await second.mailbox.read(hpk, 0, 10) == [b"kept"]
        assert await second.mailbox.message_ttl(token) > 0
        assert await second.sessions.get_session(hpk) == Session(b"sk", b"pk")
    finally:
        await second.service.stopService()


# -- record encoding --------------------------------------------------------------------------

_field = st.binary(max_size=100)


@given(_field, _field, st.none() | _field)
def test_handshake_records_round_trip(client_token, relay_token, session_sk):
    handshake = Handshake(client_token, relay_token, session_sk)
    assert decode_handshake(encode_handshake(handshake)) == handshake


@given(_field, _field)
def test_session_records_round_trip(relay_sk, client_pk):
    session = Session(relay_sk, client_pk)
    assert decode_session(encode_session(session)) == session


@given(st.binary(max_size=80))
def test_damaged_records_never_decode_to_garbage(data):
    for decode in (decode_handshake, decode_session):
        try:
            decoded = decode(data)
        except CorruptRecord:
            continue
        encode = encode_handshake if decode is decode_handshake else encode_session
        assert encode(decoded) == data


@given(st.text(max_size=60) | st.builds(lambda s: "redis://" + s, st.text(max_size=40))
       | st.builds(lambda s: "unix://" + s, st.text(max_size=40)))
def test_any_url_parses_or_is_a_config_error(url):
    try:
        address = parse_redis_url(url)
    except ConfigError:
        return
    assert (address.host is None) != (address.socket_path is None)
    assert 0 <= address.port <= 65535 and address.db >= 0
