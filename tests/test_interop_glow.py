"""Interoperability with the real glow.ts client from npm, against a real `twistd relay` process.

tests/interop/glow_scenario.mjs does the talking (two identities: handshake, messages, files,
among them files cut in many small parts) and checks every answer; this side installs glow.ts
(tests/interop_node.py, once per session), runs the relay at difficulty 0 and 8 (memory
store) and at difficulty 0 on a real redis-server (the file test also at 8 on Redis), runs
the scenario, and then reads the relay's log for server errors and leaked key material.

Nothing here is skipped: without node/npm, or when the install fails, the tests fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop_node import (
    INSTALL_TIMEOUT,
    INTEROP_DIR,
    SCENARIO_TIMEOUT,
    _node_modules_locked,
    _tail,
    glow_node,
)
from tests.relay_process import RelayProcess

SCENARIO = INTEROP_DIR / "glow_scenario.mjs"


@pytest.fixture(scope="session")
def node() -> str:
    """node, with glow.ts installed into tests/interop/node_modules by npm: once per test
    session, however many modules use this fixture (tests.interop_node remembers)."""
    return glow_node()


class GlowRelay(RelayProcess):
    """A real relay for glow.ts: its difficulty, store, and a files directory of its own."""

    def __init__(self, workdir: Path, difficulty: int, store_url: str = "memory") -> None:
        self.difficulty = difficulty
        self.files_dir = workdir / "files"
        # A staple listener on a free port: no fixed ports, nothing outside workdir.
        super().__init__(workdir, ["--difficulty", str(difficulty), "--store", store_url,
                                   "--files-dir", str(self.files_dir)], staple=True)


# (difficulty, store): both difficulties, and the Redis back-end once (the file test runs
# both difficulties on both stores).
RELAYS = [(0, "memory"), (8, "memory"), (0, "redis")]
RELAY_IDS = ["difficulty0", "difficulty8", "difficulty0-redis"]


@pytest.fixture(params=RELAYS, ids=RELAY_IDS)
def relay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GlowRelay]:
    difficulty, store = request.param
    store_url = "memory"
    if store == "redis":
        redis = request.getfixturevalue("redis_server")  # tests/conftest.py, one per run
        redis.flush()
        store_url = redis.url
    process = GlowRelay(tmp_path, difficulty, store_url)
    try:
        process.start()
        yield process
    finally:
        process.stop()


def run_scenario(node: str, relay: GlowRelay, scenario: str,
                 extra: tuple[str, ...] = ()) -> dict:
    command = [node, str(SCENARIO), relay.url, scenario, str(relay.difficulty), *extra]
    try:
        with _node_modules_locked(exclusive=False, timeout=INSTALL_TIMEOUT):
            result = subprocess.run(command, cwd=INTEROP_DIR, capture_output=True, text=True,
                                    timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"glow.ts scenario {scenario} took over {SCENARIO_TIMEOUT} s\n"
                    f"stderr: {_tail(str(e.stderr or ''))}\nrelay log:\n{_tail(relay.log())}")
    if result.returncode != 0:
        pytest.fail(f"glow.ts scenario {scenario} failed ({result.returncode}):\n"
                    f"{_tail(result.stderr)}\nrelay log:\n{_tail(relay.log())}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _spellings(b64_value: str) -> set[str]:
    """How a logged value could show up: standard and URL-safe base64, lower/upper hex."""
    raw = base64.b64decode(b64_value, validate=True)
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    return {b64_value, urlsafe, urlsafe.rstrip("="), raw.hex(), raw.hex().upper()}


def assert_log_is_clean(relay: GlowRelay, must_not_log: list[str]) -> None:
    relay.stop()  # the whole log is on disk once twistd has exited
    log = relay.log()
    assert re.search(r"\] /command 200\b", log), f"the relay logged no commands:\n{_tail(log)}"
    server_errors = re.findall(r"\] /\w+ 5\d\d\b.*", log)
    assert not server_errors, f"the relay answered with server errors: {server_errors}"
    assert "Traceback" not in log, f"the relay logged a traceback:\n{_tail(log, 80)}"
    assert len(must_not_log) >= 10, f"the scenario reported too little material: {must_not_log}"
    for value in set(must_not_log):
        for spelling in _spellings(value):
            assert spelling not in log, (
                f"the relay's log contains key material or a token in full ({spelling[:6]}...)")


@pytest.mark.slow
def test_glow_messages(node: str, relay: GlowRelay) -> None:
    """Two glow.ts identities: handshake, upload, count, download, messageStatus, delete."""
    result = run_scenario(node, relay, "messages")
    assert result["ok"] is True
    assert result["difficulty"] == relay.difficulty
    assert result["uploaded"] == 4 and result["downloaded"] == 4
    assert_log_is_clean(relay, result["relay_must_not_log"])


@pytest.mark.slow
@pytest.mark.parametrize("relay", [*RELAYS, (8, "redis")], indirect=True,
                         ids=[*RELAY_IDS, "difficulty8-redis"])
def test_glow_files(node: str, relay: GlowRelay) -> None:
    """glow.ts uploads a multi-chunk file, the other identity downloads it byte-identical and
    deletes it; then files cut in many small parts of uneven sizes, sent out of order."""
    result = run_scenario(node, relay, "files")
    assert result["ok"] is True
    assert result["chunks"] >= 3
    assert result["file_size"] > 2 * result["chunk_size"]
    small = result["small_parts"]
    assert len(small) == 3 and small[0] >= 4 and small[1] >= 30 and small[2] == 1, small
    assert_log_is_clean(relay, result["relay_must_not_log"])
    # Deleted means gone from disk too (small bookkeeping files may stay; chunks may not).
    left = {str(path.relative_to(relay.files_dir)): path.stat().st_size
            for path in relay.files_dir.rglob("*") if path.is_file()}
    assert sum(left.values()) < 1024, f"chunks left on disk after deleteFile: {left}"


def test_log_check_catches_key_material(tmp_path: Path) -> None:
    """The log check itself: a full key in any common spelling fails it, a short prefix not."""
    key = base64.b64encode(bytes(range(200, 232))).decode()
    fine = "2026-01-01T00:00:00+0000 [relay.http#info] /command 200 count c8c9cacb 0.3ms\n"
    for logged in [key, _spellings(key).pop(), bytes(range(200, 232)).hex()]:
        relay = GlowRelay(tmp_path, 0)
        relay.log_path.write_text(fine + f"[relay#info] hpk {logged}\n")
        with pytest.raises(AssertionError, match="key material"):
            assert_log_is_clean(relay, [key] * 10)
    relay.log_path.write_text(fine)
    assert_log_is_clean(relay, [key] * 10)


# ---- dead drops between our `relay` command and glow.ts (both ways) ------------------------

def _relay_cli(home: Path, relay: GlowRelay, *args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("relay")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "relay.client.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({"RELAY_HOME": str(home), "RELAY_URL": relay.url})
    result = subprocess.run(command + list(args), capture_output=True, text=True, env=env,
                            cwd=home.parent, timeout=SCENARIO_TIMEOUT)
    assert result.returncode == 0, f"relay {' '.join(args)}: {result.stderr}"
    return result


@pytest.mark.slow
def test_glow_drops(node: str, relay: GlowRelay, tmp_path: Path) -> None:
    """`relay send --to` drops files for a glow.ts identity, which collects and checks them
    (paper metadata, secretbox chunks); glow.ts then drops a file and a text for us, which
    `relay receive` collects, verifies (size, MD5) and writes."""
    from nacl.public import PrivateKey

    alice_home = tmp_path / "alice-home"
    alice_pk = _relay_cli(alice_home, relay, "identity").stdout.split()[2]
    glow_bob = PrivateKey.generate()
    bob_pk = base64.b64encode(bytes(glow_bob.public_key)).decode()
    _relay_cli(alice_home, relay, "contacts", "add", "bob", bob_pk)

    outbox = tmp_path / "outbox"
    (outbox / "docs").mkdir(parents=True)
    big = os.urandom(1_200_000)  # three chunks at the relay's 500 KiB max_chunk_size
    (outbox / "report ✓.bin").write_bytes(big)
    (outbox / "docs" / "notes.md").write_text("# notes\n")
    os.chmod(outbox / "docs" / "notes.md", 0o640)
    _relay_cli(alice_home, relay, "send", "--to", "bob", "--wait", "0", "--text", "from python",
               str(outbox / "report ✓.bin"), str(outbox / "docs"))

    files = []
    for name, path in [("report ✓.bin", outbox / "report ✓.bin"),
                       ("docs/notes.md", outbox / "docs" / "notes.md")]:
        data = path.read_bytes()
        files.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "md5": hashlib.md5(data).hexdigest(),
                      "attrs": f"{path.stat().st_mode & 0o777:o}"})
    spec = {"bob_secret": base64.b64encode(bytes(glow_bob)).decode(), "alice_public": alice_pk,
            "files": files, "expected_messages": len(files) + 1, "text": "from python",
            "reply_name": "from glow.bin", "reply_size": 700_000, "reply_text": "hello from glow"}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    result = run_scenario(node, relay, "drops", (str(spec_path),))
    assert result["ok"] is True
    assert sorted(r["name"] for r in result["received"]) == sorted(f["name"] for f in files)
    assert max(r["chunks"] for r in result["received"]) == 3

    inbox = tmp_path / "alice-inbox"
    received = _relay_cli(alice_home, relay, "receive", "--mailbox", "-y", "-o", str(inbox))
    assert "hello from glow" in received.stdout
    got = inbox / "from glow.bin"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == result["reply"]["sha256"]
    assert got.stat().st_mode & 0o777 == 0o640  # the paper's attrs, as glow's app set it
    assert int(got.stat().st_mtime) == 1700000001  # and its modified time
    assert "Nothing waiting" in _relay_cli(alice_home, relay, "inbox").stdout
    assert_log_is_clean(relay, result["relay_must_not_log"])
