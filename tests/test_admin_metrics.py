"""Metrics on the admin endpoint of a real `twistd relay`: the figures move as requests flow
(a handshake, an upload, a file upload, a join, a refusal), and nothing in the exposition
names a client's address, key or token."""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from relay.config import load_config
from relay.crypto import b64encode, make_nonce
from relay.service import make_relay_service
from tests.admin_support import get, scrape, value
from tests.relay_process import RelayProcess, free_port
from tests.rendezvous.staple_peer import Caller, connect_peer, staple_line
from tests.zax import ZaxClient

CONFIG = """
[mailbox]
# One handshake per 10 s window from a client: the second is refused (429).
handshake_rate_per_client = 0.15
"""


@pytest_twisted.ensureDeferred
async def test_metrics_move_as_requests_flow_and_name_no_client(tmp_path):
    (tmp_path / "relay.toml").write_text(CONFIG)
    admin_port = free_port()
    relay = RelayProcess(tmp_path, ["--config", str(tmp_path / "relay.toml"),
                                    "--admin", f"tcp:{admin_port}:interface=127.0.0.1"],
                         staple=True)
    relay.start()
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        _, before = await scrape(admin)
        assert value(before, "relay_store_up") == 1
        assert value(before, "relay_pow_difficulty") == 0

        alice = ZaxClient(relay.post, time.time)
        alice.connect()
        status, _, _ = alice.upload(alice, b"x" * 1000)
        assert status == 200
        status, body = alice.command({
            "cmd": "startFileUpload", "to": b64encode(alice.hpk), "file_size": 100_000,
            "metadata": {"nonce": b64encode(make_nonce(time.time())),
                         "ctext": b64encode(b"encrypted metadata")}})
        assert status == 200
        status, body = relay.post("join", json.dumps({"role": "sender"}).encode())
        assert status == 200, body
        channel = json.loads(body)
        refused = [ZaxClient(relay.post, time.time).start()[0] for _ in range(5)]
        assert 429 in refused

        text, after = await scrape(admin)
    finally:
        relay.kill()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("relay_handshakes_total") >= 1
    assert moved("relay_sessions_total") == 1
    for endpoint in ("/start_session", "/verify_session", "/prove", "/join"):
        assert moved("relay_http_requests_total", endpoint=endpoint, status="200") >= 1
        assert moved("relay_http_request_duration_seconds_count", endpoint=endpoint) >= 1
    assert moved("relay_http_requests_total", endpoint="/command", status="200") == 2
    assert moved("relay_commands_total", command="upload") == 1
    assert moved("relay_commands_total", command="startFileUpload") == 1
    assert moved("relay_refusals_total", status="429",
                 limit="mailbox.handshake_rate_per_client") == refused.count(429)
    assert moved("relay_store_messages") >= 1  # the upload (and the file's metadata record)
    assert moved("relay_store_message_bytes") >= 1000
    assert value(after, "relay_file_reserved_bytes") > 0
    assert moved("relay_rendezvous_open_channels") == 1
    assert value(after, "relay_http_request_duration_seconds_bucket",
                 endpoint="/prove", le="+Inf") >= 1

    # Nothing that identifies a client: no address, key, token, channel name or uuid.
    for secret in ("127.0.0.1", b64encode(alice.hpk), b64encode(alice.client_token),
                   b64encode(bytes(alice.identity.public_key)), channel["channel"],
                   channel["uuid"]):
        assert secret not in text


def test_each_relay_in_a_process_has_its_own_registry():
    config = load_config(None, {"admin": {"endpoint": "tcp:0:interface=127.0.0.1"},
                                "files": {"enabled": False}})
    one, two = make_relay_service(config, reactor), make_relay_service(config, reactor)
    assert one.admin.registry is not two.admin.registry
    assert one.site.request_stats is not two.site.request_stats
    one.site.request_stats.observe("/prove", 200, 0.01, "-")
    assert two.site.request_stats.requests == {}
    off = make_relay_service(load_config(None, {"files": {"enabled": False}}), reactor)
    assert off.admin is None and not hasattr(off.site, "request_stats")


async def eventually(check, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.02, lambda: None)


@pytest.mark.parametrize("data_path", ["splice", "copy"])
@pytest_twisted.ensureDeferred
async def test_stapled_pairs_and_bytes_relayed(data_path):
    """In process (a RelayService, as twistd builds it): the pair and its bytes show."""
    config = load_config(None, {
        "http": {"endpoint": "tcp:0:interface=127.0.0.1"},
        "rendezvous": {"staple_endpoint": "tcp:0:interface=127.0.0.1", "data_path": data_path},
        "admin": {"endpoint": "tcp:0:interface=127.0.0.1"}, "files": {"enabled": False}})
    service = make_relay_service(config, reactor)
    service.startService()
    try:
        admin = f"http://127.0.0.1:{service.admin.port_number()}"
        url = f"http://127.0.0.1:{service.http.port_number()}"
        staple_port = service.listeners()[1].port_number()
        _, sender, _ = await Caller(reactor, url, "127.0.0.2").post("/join", {"role": "sender"})
        _, recipient, _ = await Caller(reactor, url, "127.0.0.3").post(
            "/join", {"role": "recipient", "channel": sender["channel"]})
        a = await connect_peer(reactor, staple_port, "127.0.0.2",
                               staple_line(sender["channel"], "sender", sender["uuid"]))
        b = await connect_peer(reactor, staple_port, "127.0.0.3",
                               staple_line(sender["channel"], "recipient", recipient["uuid"]))
        assert await a.got_ok == b"ok" and await b.got_ok == b"ok"
        a.transport.write(b"x" * 100_000)
        b.transport.write(b"y" * 50_000)
        await eventually(lambda: len(b.received) >= 100_003 and len(a.received) >= 50_003)
        _, live = await scrape(admin)
        assert value(live, "relay_rendezvous_stapled_pairs") == 1
        assert value(live, "relay_rendezvous_relayed_bytes_total") == 150_000
        a.transport.loseConnection()
        await b.lost
        await eventually(lambda: not service.listeners()[1].listener.pairs)
        _, ended = await scrape(admin)
        assert value(ended, "relay_rendezvous_stapled_pairs") == 0
        assert value(ended, "relay_rendezvous_relayed_bytes_total") == 150_000
        assert value(ended, "relay_http_requests_total", endpoint="/join", status="200") == 2
        # An unknown path is counted as "other", never under its own name.
        assert (await get(url + "/secret-looking-path"))[0] == 503
        text, after = await scrape(admin)
        assert value(after, "relay_http_requests_total", endpoint="other", status="503") == 1
        assert "secret-looking-path" not in text and "127.0.0.2" not in text
    finally:
        await service.stopService()
