"""Issue 9, fair storage: one identity or one address filling the store cannot lock others
out; a full Redis refuses with 507 and recovers; an evicting Redis is refused at start;
file reservations cannot block other clients."""

from __future__ import annotations

import subprocess

import pytest

from tests.abuse import attacks
from tests.abuse.relays import redis
from tests.abuse.settings import BYSTANDER_SECONDS, REDIS_MAXMEMORY
from tests.relay_process import free_port, twistd_command

MIB = 1024 * 1024


@pytest.fixture
def store_redis(store):
    """For the redis runs, a redis-server with a small maxmemory (noeviction): the store is
    finite on both kinds, so filling it is possible."""
    if store == "memory":
        yield None
        return
    with redis(maxmemory=REDIS_MAXMEMORY, policy="noeviction") as server:
        yield server


def _bystander_stored(report) -> None:
    stored = report.facts["bystander"]
    assert stored["message"] == 200, report
    assert stored["file"] == 200 and stored["file_answer"] == {"status": "OK"}, report
    assert not report.bystanders_ok(BYSTANDER_SECONDS), report


@pytest.mark.parametrize("by", ["identity", "address"])
def test_one_uploader_cannot_fill_the_store_for_others(launch, store, store_redis, by):
    relay = launch("storage", store, redis_server=store_redis)
    report = attacks.run(relay, attacks.upload_flood, by=by, budget=96 * MIB)
    assert report.facts["attacker_bytes"] >= MIB, report  # the attack did store something
    assert 500 not in report.facts["attacker"], report
    _bystander_stored(report)


def test_full_redis_refuses_with_507_and_recovers(launch):
    with redis(maxmemory=REDIS_MAXMEMORY, policy="noeviction") as server:
        relay = launch("redis_full", "redis", redis_server=server)
        report = attacks.run(relay, attacks.fill_redis)
    facts = report.facts
    assert 500 not in facts["uploads"] and 507 in facts["uploads"], report
    assert facts["download"] == 200 and set(facts["deletes"]) == {200}, report
    assert facts["upload_after_delete"] == 200, report


def test_evicting_redis_is_refused_at_start(tmp_path):
    # With allkeys-lru, Redis would silently drop sessions, nonces and messages.
    with redis(maxmemory=REDIS_MAXMEMORY, policy="allkeys-lru") as server:
        # No abuse settings needed: only the store.
        config = tmp_path / "relay.toml"
        config.write_text(f'[store]\nurl = "{server.url}"\n')
        command = twistd_command() + ["-n", "--pidfile=", "relay", "--config", str(config),
                                      "--files-dir", str(tmp_path / "files"), "--port",
                                      f"tcp:{free_port()}:interface=127.0.0.1", "--staple",
                                      f"tcp:{free_port()}:interface=127.0.0.1"]
        process = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            pytest.fail("the relay started against an allkeys-lru Redis (still running after "
                        "10 s): " + output.decode(errors="replace")[-500:])
    text = output.decode(errors="replace")
    assert process.returncode != 0, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    mentions = [line for line in text.splitlines()
                if "maxmemory-policy" in line or "allkeys-lru" in line or "evict" in line]
    assert len(mentions) == 1, text[-2000:]


def test_file_reservations_cannot_block_others(launch, store, store_redis):
    # Fresh identities from one address reserve 1 GiB files (then ever smaller ones) while
    # the relay holds 8 GiB of files in all.
    relay = launch("reservations", store, redis_server=store_redis)
    report = attacks.run(relay, attacks.file_reservations, size=2**30)
    assert report.facts["reserved_bytes"] >= 2**30, report  # the attack did reserve
    assert 500 not in report.facts["reservations"], report
    _bystander_stored(report)
