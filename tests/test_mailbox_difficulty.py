"""Adaptive proof of work: the controller on a task.Clock, and handshakes across changes."""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from relay.config import ConfigError, MailboxConfig, load_config
from relay.crypto import b64encode, h2, meets_difficulty, solve_pow
from relay.mailbox.difficulty import (
    SKETCH_DEPTH,
    AdaptiveDifficulty,
    ClientRates,
    SlidingRate,
    bits_for_rate,
)
from relay.mailbox.handshake import SessionHandshake
from relay.store.interfaces.sessions import Handshake
from relay.store.redis.codec import CorruptRecord, decode_handshake, encode_handshake, pack_fields
from relay.tap import Options
from tests.mailbox_harness import MemoryRelay
from tests.zax import crlf

# A small relay's settings: floor 2, ceiling 10, +1 bit above 10 handshakes/s, 1-second window.
SMALL = {"difficulty": 2, "max_difficulty": 10, "difficulty_target_rate": 10.0,
         "difficulty_client_rate": 0.0, "difficulty_window": 1.0, "difficulty_cooldown": 5.0,
         "handshake_rate_per_client": 0.0}


def controller(**settings) -> tuple[AdaptiveDifficulty, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)
    return AdaptiveDifficulty(MailboxConfig(**{**SMALL, **settings}), clock.seconds), clock


def drive(pow_: AdaptiveDifficulty, clock: Clock, rate: float, seconds: float,
          client: str = "192.0.2.1/32") -> list[int]:
    """`rate` handshakes per second, evenly spaced, for `seconds`; the difficulties given."""
    if rate <= 0:
        clock.advance(seconds)
        return []
    given_ = []
    for _ in range(round(rate * seconds)):
        clock.advance(1 / rate)
        given_.append(pow_.for_handshake(client))
    return given_


def changes(events: list[dict]) -> list[tuple[int, int]]:
    return [(e["old"], e["new"]) for e in events if e.get("log_namespace") == "relay.pow"]


# -- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rate, bits", [
    (0, 0), (10, 0), (10.5, 1), (20, 1), (21, 2), (40, 2), (41, 3), (1000, 7),
])
def test_one_bit_per_doubling_above_the_target(rate, bits):
    assert bits_for_rate(rate, 10.0) == bits


def test_sliding_rate_counts_the_last_window():
    clock = Clock()
    rate = SlidingRate(10.0)
    clock.advance(100.0)  # the start of a bucket
    rate.add(clock.seconds(), 50)
    assert rate.rate(clock.seconds()) == 5.0
    clock.advance(10.0)  # the next bucket begins: all 50 still inside the window
    assert rate.rate(clock.seconds()) == 5.0
    clock.advance(5.0)  # half the old bucket has slid out
    assert rate.rate(clock.seconds()) == 2.5
    clock.advance(30.0)
    assert rate.rate(clock.seconds()) == 0.0


# -- the controller ---------------------------------------------------------------------------


def test_a_flood_raises_it_within_a_second_and_it_falls_back_after():
    pow_, clock = controller()
    assert pow_.current() == 2
    with capturedLogs() as events:
        given_ = drive(pow_, clock, rate=200, seconds=1.0)
        # 200/s is 20x the target: ceil(log2(20)) = 5 bits over the floor.
        assert max(given_) == pow_.current() == 7
        drive(pow_, clock, rate=200, seconds=3.0)
        assert pow_.current() == 7
        drive(pow_, clock, rate=0, seconds=2.0)  # the window has emptied, the cooldown runs
        assert pow_.current() == 7
        drive(pow_, clock, rate=0, seconds=4.0)
        assert pow_.current() == 2
    # The way up steps through the levels as the window fills; one line per change, no more.
    steps = changes(events)
    assert steps[-1] == (7, 2)
    assert all(new == old + 1 for old, new in steps[:-1]) and steps[-2][1] == 7
    assert all("192.0.2" not in str(e) for e in events)


def test_bounds_hold_whatever_the_rate():
    pow_, clock = controller()
    assert set(drive(pow_, clock, rate=5000, seconds=2.0)[-100:]) == {10}
    assert pow_.current() == 10
    drive(pow_, clock, rate=0, seconds=60.0)
    assert pow_.current() == 2


def test_hysteresis_a_rate_hovering_at_a_threshold_does_not_flap():
    pow_, clock = controller()
    with capturedLogs() as events:
        drive(pow_, clock, rate=12, seconds=3.0)  # just above the target: +1
        assert pow_.current() == 3
        # Below the target but above half of it: the level holds, however long.
        for _ in range(10):
            drive(pow_, clock, rate=9, seconds=3.0)
            drive(pow_, clock, rate=11, seconds=3.0)
            drive(pow_, clock, rate=6, seconds=3.0)
        assert pow_.current() == 3
        drive(pow_, clock, rate=4, seconds=10.0)  # under half the target: down
        assert pow_.current() == 2
    assert changes(events) == [(2, 3), (3, 2)]


def test_a_wall_clock_stepping_back_neither_inflates_nor_pins_it():
    pow_, clock = controller()
    drive(pow_, clock, rate=200, seconds=2.0)
    assert pow_.current() == 7
    clock.advance(-3600.0)  # NTP steps the clock back an hour
    drive(pow_, clock, rate=2, seconds=10.0)
    assert pow_.current() == 2  # one cooldown later, not an hour later
    assert pow_.rate() < 3


def test_fixed_when_max_difficulty_is_not_above_the_floor():
    pow_, clock = controller(difficulty=5, max_difficulty=0)
    assert set(drive(pow_, clock, rate=5000, seconds=1.0)) == {5}
    assert pow_.current() == 5


def test_a_client_over_its_own_rate_pays_extra_bits():
    pow_, clock = controller(difficulty_client_rate=1.0, difficulty_target_rate=1000.0)
    # One network handshakes 12 times a second; the node as a whole is far under its target.
    noisy = drive(pow_, clock, rate=12, seconds=2.0, client="198.51.100.7/32")
    assert noisy[-1] == 2 + 4  # 12x its own rate: ceil(log2(12)) = 4 extra bits
    assert pow_.for_handshake("203.0.113.9/32") == 2  # a quiet neighbour pays the floor
    assert pow_.current() == 2
    drive(pow_, clock, rate=0, seconds=3.0)
    assert pow_.for_handshake("198.51.100.7/32") == 2  # its window has emptied


def test_client_counts_take_fixed_memory_and_never_undercount():
    clock = Clock()
    rates = ClientRates(window=10.0, width=64)
    for i in range(5000):  # far more clients than cells
        rates.add(f"2001:db8:{i:x}::/64", clock.seconds())
    assert len(rates.current) == len(rates.previous) == SKETCH_DEPTH * 64
    # A heavy hitter among the crowd: its count is at least its own handshakes.
    counts = [rates.add("192.0.2.66/32", clock.seconds()) for _ in range(30)]
    assert counts[-1] * 10.0 >= 30


@given(st.lists(st.tuples(st.sampled_from([0.0, 3.0, 9.0, 15.0, 40.0, 150.0, 900.0]),
                          st.sampled_from([0.5, 2.0, 12.0])), min_size=1, max_size=8))
def test_level_stays_in_bounds_and_follows_a_steady_rate(segments):
    pow_, clock = controller()
    with capturedLogs() as events:
        for rate, seconds in segments:
            given_ = drive(pow_, clock, rate, seconds)
            assert all(2 <= d <= 10 for d in given_)
        rate, seconds = segments[-1]
        steady = drive(pow_, clock, rate, 15.0)  # window filled, cooldown over
        level = pow_.current()
    low = min(10, 2 + bits_for_rate(rate * 0.9, 10.0))
    high = min(10, 2 + bits_for_rate(rate * 2.2, 10.0))
    assert low <= level <= high
    assert all(low <= d <= high for d in steady[-5:])
    # Each logged change is a real move, and consecutive lines chain up.
    steps = changes(events)
    assert all(old != new for old, new in steps)
    assert all(a[1] == b[0] for a, b in zip(steps, steps[1:], strict=False))


# -- handshakes while it moves ----------------------------------------------------------------


def busy_relay() -> MemoryRelay:
    return MemoryRelay(mailbox={"difficulty": 0, "max_difficulty": 8,
                                "difficulty_target_rate": 5.0, "difficulty_client_rate": 0.0,
                                "difficulty_window": 1.0, "difficulty_cooldown": 2.0,
                                "handshake_rate_per_client": 0.0})


def flood(relay: MemoryRelay, count: int) -> int:
    """count /start_sessions at once; the difficulty the last one was given."""
    client = None
    for _ in range(count):
        client = relay.client()
        client.start()
    return client.difficulty


def test_a_handshake_started_before_a_rise_still_verifies():
    relay = busy_relay()
    early = relay.client()
    early.start()
    assert early.difficulty == 0
    assert flood(relay, 100) >= 4  # 100 in a second at target 5: 5 bits
    # Its proof is the difficulty-0 one it was asked for.
    assert early.verify()[0] == 200 and early.prove()[0] == 200


def test_a_handshake_started_high_needs_its_work_after_the_fall():
    relay = busy_relay()
    assert flood(relay, 100) >= 4
    late = relay.client()
    late.start()
    asked = late.difficulty
    assert asked >= 4
    relay.clock.advance(10.0)
    assert flood(relay, 1) == 0  # fallen back
    # The relay, not the client, remembers what was asked: the floor's proof does not do.
    cheap = crlf(b64encode(h2(late.client_token)),
                 b64encode(h2(late.client_token + late.relay_token)))
    assert relay.post("verify_session", cheap)[0] == 401
    assert late.verify()[0] == 200 and late.prove()[0] == 200


def test_a_client_sees_the_difficulty_move_and_keeps_connecting():
    relay = busy_relay()
    seen = set()
    for _ in range(3):
        for _ in range(60):
            client = relay.client()
            assert client.connect() == 0
            seen.add(client.difficulty)
            relay.clock.advance(0.01)
        relay.clock.advance(10.0)
    assert 0 in seen and max(seen) >= 3


@pytest_twisted.ensureDeferred
async def test_another_node_verifies_at_the_difficulty_this_one_asked(store_factory):
    """Two nodes share a store: one is busy, the other idle. A handshake started on the busy
    one must carry its difficulty to the idle one."""
    config = load_config(overrides={"mailbox": {k: v for k, v in SMALL.items()}}).mailbox
    busy_clock, idle_clock = Clock(), Clock()
    busy_clock.advance(time.time())
    idle_clock.advance(time.time())
    busy = SessionHandshake(config, store_factory, busy_clock)
    idle = SessionHandshake(config, store_factory, idle_clock)
    for _ in range(200):
        await busy.start_session(b64encode(os.urandom(32)).encode())
    client_token = os.urandom(32)
    key, (token_line, difficulty_line) = await busy.start_session(
        b64encode(client_token).encode())
    asked = int(difficulty_line)
    assert asked > idle.difficulty.current() == config.difficulty
    handshake = await store_factory.sessions.get_handshake(key)
    assert handshake.difficulty == asked
    relay_token = handshake.relay_token
    tokens = client_token + relay_token
    weak = os.urandom(32)
    while meets_difficulty(h2(tokens + weak), asked):
        weak = os.urandom(32)
    with pytest.raises(Exception, match="wrong proof"):
        await idle.verify_session(crlf(b64encode(key), b64encode(weak)))
    proof = solve_pow(client_token, relay_token, asked)
    _, (session_pk,) = await idle.verify_session(crlf(b64encode(key), b64encode(proof)))
    assert len(session_pk) == 44
    # The verified record keeps the difficulty (a retried verify checks the same work).
    assert (await store_factory.sessions.get_handshake(key)).difficulty == asked


@pytest_twisted.ensureDeferred
async def test_handshake_difficulty_round_trips_through_the_store(store_factory):
    sessions = store_factory.sessions
    for difficulty in (None, 0, 9, 64):
        key = os.urandom(32)
        handshake = Handshake(os.urandom(32), os.urandom(32), os.urandom(32), difficulty)
        await sessions.put_handshake(key, handshake, 60.0)
        assert await sessions.get_handshake(key) == handshake


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("setting, value", [
    ("max_difficulty", 65), ("max_difficulty", -1), ("max_difficulty", 1.5),
    ("difficulty_target_rate", 0), ("difficulty_client_rate", -1.0),
    ("difficulty_client_slots", 0), ("difficulty_window", 0), ("difficulty_cooldown", -1),
])
def test_bad_pow_settings_fail_with_one_line(setting, value):
    with pytest.raises(ConfigError, match=setting):
        load_config(overrides={"mailbox": {setting: value}})


def test_max_difficulty_option():
    options = Options()
    options.parseOptions(["--difficulty", "3", "--max-difficulty", "0"])
    mailbox = options.relay_config.mailbox
    assert (mailbox.difficulty, mailbox.max_difficulty) == (3, 0)
    assert not AdaptiveDifficulty(mailbox, Clock().seconds).adaptive


# -- the Redis record -------------------------------------------------------------------------

_token = st.binary(min_size=32, max_size=32)


@given(_token, _token, st.none() | _token, st.none() | st.integers(0, 64))
def test_handshake_records_keep_the_difficulty(client_token, relay_token, session_sk,
                                               difficulty):
    handshake = Handshake(client_token, relay_token, session_sk, difficulty)
    record = encode_handshake(handshake)
    assert decode_handshake(record) == handshake
    # No difficulty: the version-1 record older relays write and read.
    assert record[0] == (1 if difficulty is None else 2)


def test_version_1_handshake_records_still_decode():
    old = pack_fields(b"c" * 32, b"r" * 32, None)  # as relays before the difficulty wrote them
    assert decode_handshake(old) == Handshake(b"c" * 32, b"r" * 32, None, None)


@pytest.mark.parametrize("difficulty_field", [None, b"", b"\x01\x02"])
def test_version_2_handshake_without_a_one_byte_difficulty_is_corrupt(difficulty_field):
    record = pack_fields(b"c" * 32, b"r" * 32, None, difficulty_field, version=2)
    with pytest.raises(CorruptRecord):
        decode_handshake(record)
