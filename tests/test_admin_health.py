"""Health and readiness of a real `twistd relay`: /healthz while the process serves; /readyz
follows the store (Redis down at start: one line, no retry lines, 503 until it answers;
Redis killed: 503; back: 200), and is 200 at once on the memory store."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.admin_support import get, scrape, value
from tests.redis_server import RedisServer
from tests.relay_process import RelayProcess, free_port

DEADLINE = 30.0


async def wait_for_status(url: str, status: int) -> str:
    """Poll url until it answers `status`; its body then."""
    deadline = time.monotonic() + DEADLINE
    seen = None
    while time.monotonic() < deadline:
        try:
            seen, body = await get(url, timeout=5)
        except Exception as e:  # noqa: BLE001 - not listening yet
            seen, body = repr(e), ""
        if seen == status:
            return body
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"{url} answered {seen}, not {status}, for {DEADLINE} s")


@pytest_twisted.ensureDeferred
async def test_readiness_follows_redis_from_a_start_without_it(tmp_path):
    redis = RedisServer()
    redis.port = free_port()  # chosen now, started later
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    relay = RelayProcess(tmp_path, ["--store", redis.url, "--no-files",
                                    "--admin", f"tcp:{admin_port}:interface=127.0.0.1"])
    try:
        relay.start()  # serves HTTP although Redis is down
        assert await get(admin + "/healthz") == (200, "ok\n")
        body = await wait_for_status(admin + "/readyz", 503)
        assert "store does not answer" in body
        await deferLater(reactor, 1.0, lambda: None)  # several backoff steps
        log = relay.log()
        assert log.count("cannot connect to Redis") == 1, log
        assert "Scheduling retry" not in log and "Traceback" not in log

        redis.start()
        assert await wait_for_status(admin + "/readyz", 200) == "ready\n"
        _, samples = await scrape(admin)
        assert value(samples, "relay_store_up") == 1
        assert value(samples, "relay_store_calls_total") >= 1
        # Every finished call is in the latency histogram.
        assert value(samples, "relay_store_call_duration_seconds_count") == \
            value(samples, "relay_store_calls_total")
        assert value(samples, "relay_store_call_duration_seconds_bucket", le="+Inf") == \
            value(samples, "relay_store_calls_total")
        assert value(samples, "relay_store_errors_total", kind="unreachable") >= 1
        redis.stop()
        await wait_for_status(admin + "/readyz", 503)
        _, samples = await scrape(admin)
        assert value(samples, "relay_store_up") == 0
        assert (await get(admin + "/healthz"))[0] == 200
        redis.start()
        await wait_for_status(admin + "/readyz", 200)
        assert "answers again" in relay.log()
    finally:
        relay.kill()
        redis.close()


@pytest_twisted.ensureDeferred
async def test_ready_at_once_on_the_memory_store_and_unknown_paths_are_404(tmp_path):
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    relay = RelayProcess(tmp_path, ["--no-files", "--admin",
                                    f"tcp:{admin_port}:interface=127.0.0.1"], staple=True)
    relay.start()
    try:
        assert await get(admin + "/readyz") == (200, "ready\n")
        assert (await get(admin + "/nope"))[0] == 404
        # The API's port does not serve the admin pages.
        assert (await get(relay.url + "/metrics"))[0] != 200
    finally:
        relay.kill()
