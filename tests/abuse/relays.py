"""Starting the relay (and Redis) an attack runs against: a real `twistd relay` on loopback,
configured from tests/abuse/settings.py, with a listen backlog deep enough for floods.
Shared by tests/abuse and bench/abuse.py."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from tests.abuse.settings import settings, to_toml
from tests.redis_server import RedisServer
from tests.relay_process import RelayProcess, free_port

LENIENT_ENV = "RELAY_ABUSE_LENIENT"
_UNKNOWN = re.compile(r"unknown setting \[(\w+)\] (\w+)")


class SettingUnknown(RuntimeError):
    """The relay refused a setting of tests/abuse/settings.py (not merged yet, or renamed)."""


def known_settings(config: dict[str, dict[str, Any]]) -> tuple[dict, list[str]]:
    """The settings this relay's config knows, and the names of the ones it does not."""
    from relay.config import SECTIONS

    kept: dict[str, dict[str, Any]] = {}
    dropped = []
    for section, values in config.items():
        fields = {f.name for f in attrs.fields(SECTIONS[section])}
        kept[section] = {k: v for k, v in values.items() if k in fields}
        dropped += [f"[{section}] {k}" for k in values if k not in fields]
    return kept, dropped


@attrs.define
class Target:
    """A running relay under attack."""

    process: RelayProcess
    store: str
    profile: str
    config: dict[str, dict[str, Any]]
    dropped: list[str]
    redis: RedisServer | None = None

    @property
    def port(self) -> int:
        assert self.process.port is not None
        return self.process.port

    @property
    def staple_port(self) -> int:
        assert self.process.staple_port is not None
        return self.process.staple_port

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def log(self) -> str:
        return self.process.log()

    def alive(self) -> bool:
        return self.process.process is not None and self.process.process.poll() is None


def relay_args(workdir: Path, profile: str, store_url: str,
               extra: dict[str, dict[str, Any]] | None = None) -> tuple[list[str], dict, list]:
    """The twistd relay arguments (a --config file in workdir) for the profile."""
    config = settings(profile)
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    config.setdefault("store", {})["url"] = store_url
    config.setdefault("files", {}).setdefault("directory", str(workdir / "files"))
    dropped: list[str] = []
    if os.environ.get(LENIENT_ENV):
        config, dropped = known_settings(config)
    path = workdir / "abuse.toml"
    path.write_text(to_toml(config))
    return ["--config", str(path)], config, dropped


@contextlib.contextmanager
def _children_fd_limit(limit: int | None) -> Iterator[None]:
    """Processes started within inherit a soft RLIMIT_NOFILE of limit (this one's is put
    back on the way out), so the relay starts with, and sizes its guards to, that limit."""
    if limit is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_relay(workdir: Path, profile: str, store_url: str,
                extra: dict[str, dict[str, Any]] | None = None, fd_limit: int | None = None
                ) -> tuple[RelayProcess, dict, list]:
    """A started relay (HTTP and staple listeners on free loopback ports, backlog 4096),
    with a soft RLIMIT_NOFILE of fd_limit if given."""
    args, config, dropped = relay_args(workdir, profile, store_url, extra)
    for _ in range(5):
        process = RelayProcess(workdir, [], staple=True)
        # Ports chosen here so the listen options (a deep backlog: the floods connect faster
        # than the relay accepts) can follow RelayProcess's own --port/--staple, which they
        # override (twistd keeps the last value of an option).
        process.port, process.staple_port = free_port(), free_port()
        process.args = args + [
            "--port", f"tcp:{process.port}:interface=127.0.0.1:backlog=4096",
            "--staple", f"tcp:{process.staple_port}:interface=127.0.0.1:backlog=4096"]
        try:
            with _children_fd_limit(fd_limit):
                process.start()
            return process, config, dropped
        except RuntimeError:
            log = process.log()
            match = _UNKNOWN.search(log)
            if match:
                raise SettingUnknown(
                    f"the relay does not know the setting [{match[1]}] {match[2]}: rename it in "
                    f"tests/abuse/settings.py, merge the branch that adds it, or set "
                    f"{LENIENT_ENV}=1 to run without it") from None
            if "Address already in use" not in log:
                raise RuntimeError(f"the relay did not start:\n{log[-2000:]}") from None
    raise RuntimeError("the relay did not start on free ports")


@contextlib.contextmanager
def redis(maxmemory: str | None = None, policy: str | None = None) -> Iterator[RedisServer]:
    """A fresh redis-server (memory limits set with CONFIG SET), killed on the way out."""
    with RedisServer.running() as server:
        if maxmemory:
            server.command("CONFIG", "SET", "maxmemory", maxmemory)
        if policy:
            server.command("CONFIG", "SET", "maxmemory-policy", policy)
        yield server


@contextlib.contextmanager
def target(workdir: Path, profile: str, store: str, *, redis_server: RedisServer | None = None,
           extra: dict[str, dict[str, Any]] | None = None, fd_limit: int | None = None
           ) -> Iterator[Target]:
    """A relay for the profile on the store ("memory" or "redis"); with store "redis" and no
    server given, a fresh redis-server of its own. Everything is stopped on the way out."""
    with contextlib.ExitStack() as stack:
        server = redis_server
        if store == "redis" and server is None:
            server = stack.enter_context(redis())
        url = "memory" if store == "memory" else server.url  # type: ignore[union-attr]
        process, config, dropped = start_relay(workdir, profile, url, extra, fd_limit)
        stack.callback(process.kill, signal.SIGKILL)
        yield Target(process, store, profile, config, dropped, server)
