"""The deployment files in etc/ are accepted by the programs that read them: the systemd unit
by `systemd-analyze verify` (where available), the Redis fragment by a real redis-server
(and it sets what the relay needs)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, redis_executable
from tests.relay_process import free_port

ETC = Path(__file__).resolve().parent.parent / "etc"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_systemd_unit_verifies(tmp_path):
    # verify also checks that ExecStart's program exists: point it at one that does.
    unit = (ETC / "relay.service").read_text()
    assert "/opt/relay/venv/bin/twistd" in unit
    (tmp_path / "relay.service").write_text(
        unit.replace("/opt/relay/venv/bin/twistd", shutil.which("true") or "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "relay.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "relay.service" not in result.stderr, result.stderr  # no warning about it


def test_the_redis_fragment_runs_and_sets_what_the_relay_needs(tmp_path):
    server = RedisServer()
    server.port = free_port()
    process = subprocess.Popen(
        [redis_executable(), str(ETC / "redis.conf"), "--port", str(server.port),
         "--dir", str(tmp_path), "--daemonize", "no", "--logfile", "redis.log"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert server.command("PING") == "PONG"
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "redis.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)
        settings = {}
        for name in ("maxmemory-policy", "maxmemory", "appendonly", "appendfsync"):
            settings[name] = server.command("CONFIG", "GET", name)[1]
        assert settings == {"maxmemory-policy": b"noeviction", "maxmemory": b"2147483648",
                            "appendonly": b"yes", "appendfsync": b"everysec"}
    finally:
        process.kill()
        process.wait(timeout=10)
        server.close()  # its own temp directory (the process is ours)
