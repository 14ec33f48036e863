"""Clients keep working while the proof-of-work difficulty moves, on a real `twistd relay`.

The relay gets a low target rate and short windows, so a burst of /start_session from a few
threads here raises its difficulty by several bits within a second, and it falls back a few
seconds after the burst. Meanwhile glow.ts (tests/interop/glow_scenario.mjs, scenario
`moving`) and our own client (relay.client.mailbox) keep handshaking and sending: both must
solve whatever /start_session announces, see it rise, and see it fall back to the floor.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from nacl.public import PrivateKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from relay.crypto import b64encode
from tests.relay_process import RelayProcess
from tests.test_interop_glow import (  # noqa: F401 (node: the fixture that installs glow.ts)
    INSTALL_TIMEOUT,
    SCENARIO,
    SCENARIO_TIMEOUT,
    _node_modules_locked,
    _tail,
    node,
)

# Floor 0 (so the fall ends on the difficulty-0 proof), +1 bit per doubling above 8
# handshakes/s, at most 10 bits (milliseconds of work for either client).
POW_CONFIG = """\
[mailbox]
difficulty = 0
max_difficulty = 10
difficulty_target_rate = 8.0
difficulty_client_rate = 0.0
difficulty_window = 1.0
difficulty_cooldown = 2.0
# The flood comes from one address: this test is about the global rate, not the per-client one.
handshake_rate_per_client = 0
"""
# The burst's own answers must reach this: 8 * 2^4 = 128 handshakes/s and more.
FLOOD_HIGH = 6
# What the clients must see during the burst (they handshake a few times a second only).
CLIENT_HIGH = 4
FLOOD_THREADS = 3
# Between two handshakes of each client: together they stay well under half the target
# rate, so the hysteresis lets the difficulty fall all the way to the floor (at ~4/s, a
# window that happens to hold one more handshake keeps it at 1 bit).
CLIENT_PAUSE = 1.0
GLOW_PACE_MS = 900
FLOOD_SECONDS = 4.0


class Flood:
    """Threads posting /start_session back to back over kept-alive connections."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.difficulties: list[int] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True)
                        for _ in range(FLOOD_THREADS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self.stop.is_set():
                body = b64encode(os.urandom(32)).encode()
                connection.request("POST", "/start_session", body,
                                   {"Content-Type": "text/plain"})
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200:
                    self.errors.append(f"{response.status}")
                    continue
                self.difficulties.append(int(answer.split(b"\r\n")[1]))
        except OSError as e:
            self.errors.append(repr(e))
        finally:
            connection.close()


async def our_client_loop(url: str, stop: threading.Event, seen: list[int]) -> None:
    """Fresh identities back to back, like glow's: the whole handshake, then a command."""
    from relay.client.mailbox.client import MailboxClient

    while not stop.is_set():
        client = MailboxClient(url, PrivateKey.generate(), request_timeout=30.0,
                               pow_timeout=30.0)
        token = os.urandom(32)
        relay_token, difficulty = await client.start_session(token)
        relay_pk = await client.verify_session(token, relay_token, difficulty)
        assert await client.prove(token, relay_token, relay_pk) == 0
        assert await client.count() == 0
        seen.append(difficulty)
        await deferLater(reactor, CLIENT_PAUSE)


def rose_and_fell(difficulties: list[int], high: int) -> bool:
    """Some handshake got at least `high` bits, and a later one the floor (0) again."""
    firsts = [i for i, d in enumerate(difficulties) if d >= high]
    return bool(firsts) and 0 in difficulties[firsts[0]:]


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_glow_and_our_client_keep_working_while_the_difficulty_moves(
        node: str, tmp_path: Path) -> None:  # noqa: F811 (the imported fixture)
    config = tmp_path / "relay.toml"
    config.write_text(POW_CONFIG)
    relay = RelayProcess(tmp_path, ["--config", str(config), "--files-dir",
                                    str(tmp_path / "files")], staple=True)
    relay.start()
    flood = Flood(relay.port)
    stop_ours = threading.Event()
    ours: list[int] = []
    try:
        status, body = relay.post("start_session", b64encode(os.urandom(32)).encode())
        assert (status, body.split(b"\r\n")[1]) == (200, b"0")

        # glow.ts: alice after alice, GLOW_PACE_MS apart, until one saw CLIENT_HIGH and a
        # later 0.
        command = [node, str(SCENARIO), relay.url, "moving", "0", str(CLIENT_HIGH),
                   str(GLOW_PACE_MS),
                   str(SCENARIO_TIMEOUT - 30)]
        with _node_modules_locked(exclusive=False, timeout=INSTALL_TIMEOUT):
            glow = subprocess.Popen(command, cwd=SCENARIO.parent, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            try:
                ours_done = Deferred.fromCoroutine(our_client_loop(relay.url, stop_ours, ours))
                await deferLater(reactor, 1.5)  # both clients start at the floor
                flood.start()
                await deferLater(reactor, FLOOD_SECONDS)
                flood.join()
                deadline = time.monotonic() + SCENARIO_TIMEOUT
                while glow.poll() is None or not rose_and_fell(ours, CLIENT_HIGH):
                    if time.monotonic() > deadline or ours_done.called:
                        break
                    await deferLater(reactor, 0.2)
                stop_ours.set()
                await ours_done
            finally:
                if glow.poll() is None:
                    glow.kill()
                out, err = glow.communicate(timeout=30)
        assert glow.returncode == 0, (f"glow.ts scenario moving failed:\n{_tail(err)}\n"
                                      f"relay log:\n{_tail(relay.log())}")
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        flood.join()
        stop_ours.set()
        relay.stop()

    assert not flood.errors, flood.errors[:5]
    assert max(flood.difficulties) >= FLOOD_HIGH, max(flood.difficulties)
    assert max(flood.difficulties) <= 10
    assert rose_and_fell(result["difficulties"], CLIENT_HIGH), \
        (str(result["difficulties"]), _tail(relay.log()))
    assert rose_and_fell(ours, CLIENT_HIGH), ours
    log = relay.log()
    assert re.search(r"proof-of-work difficulty 0 -> \d+", log), _tail(log)
    assert re.search(r"proof-of-work difficulty \d+ -> 0 ", log), _tail(log)
    assert "Traceback" not in log and not re.findall(r"\] /\w+ 5\d\d\b", log), _tail(log, 80)
