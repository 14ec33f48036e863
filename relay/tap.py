"""twistd glue: the command-line Options and makeService."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from relay.config import ConfigError, RelayConfig, load_config

# (option, section, setting, type, help); each overrides the config file's setting.
_SETTINGS: list[tuple[str, str, str, type, str]] = [
    ("port", "http", "endpoint", str, "HTTP endpoint of the mailbox and rendezvous API "
     "[default: tcp:8080:backlog=1024]"),
    ("store", "store", "url", str, "'memory' (default) or a redis:// URL"),
    ("difficulty", "mailbox", "difficulty", int, "proof-of-work difficulty in bits [default: 0]"),
    ("max-difficulty", "mailbox", "max_difficulty", int, "most bits the difficulty rises to "
     "under load; at or below --difficulty it stays fixed [default: 14]"),
    ("staple", "rendezvous", "staple_endpoint", str,
     "TCP endpoint where peers staple [default: tcp:9009:backlog=1024]"),
    ("staple-address", "rendezvous", "staple_address", str,
     "host:port that clients are told to staple to [default: the address the HTTP "
     "connection arrived on, staple port]"),
    ("files-dir", "files", "directory", str, "directory of file-drop chunks [default: relay-files]"),
    ("admin", "admin", "endpoint", str, "endpoint of the operators' listener: /metrics, "
     "/healthz, /readyz (keep it on loopback, e.g. tcp:9109:interface=127.0.0.1) "
     "[default: off]"),
]

_KINDS = {int: "whole number", float: "number", str: "string"}


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Serve the relay: the Zax-compatible mailbox API and the live rendezvous. "
                "Settings come from --config (TOML, see etc/relay.toml); options override it.")
    optParameters = [["config", "c", None, "TOML config file"]] + [
        [name, None, None, help_text] for name, _, _, _, help_text in _SETTINGS
    ]
    optFlags = [["no-files", None, "disable the file API (file commands answer 405)"],
                ["no-rendezvous", None, "disable the live rendezvous and staple listener"]]

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:  # parsed on its own (tests, tools): the caller reports it
                raise
            # Under twistd, which would print its whole usage text before the message: one
            # line on stderr and exit status 1, like every other start-up error.
            sys.exit(f"relay: {e}")

    def postOptions(self) -> None:
        overrides: dict[str, dict[str, Any]] = {}
        for name, section, setting, kind, _ in _SETTINGS:
            value = self[name]
            if value is None:
                continue
            try:
                value = kind(value)
            except ValueError:
                raise usage.UsageError(f"--{name} must be a {_KINDS[kind]}, not {value!r}") from None
            overrides.setdefault(section, {})[setting] = value
        if self["no-files"]:
            overrides.setdefault("files", {})["enabled"] = False
        if self["no-rendezvous"]:
            overrides.setdefault("rendezvous", {})["enabled"] = False
        try:
            self.relay_config: RelayConfig = load_config(self["config"], overrides)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from relay.heap import keep_big_buffers

    keep_big_buffers()  # reuse the file chunks' buffers instead of faulting in fresh pages

    from relay.service import make_relay_service

    config = options.relay_config
    # Start-up errors are one line and exit status 1 (twistd would print a traceback).
    problem = _files_directory_problem(config)
    if problem is not None:
        sys.exit(f"relay: {problem}")
    try:
        return make_relay_service(config, reactor)
    except ConfigError as e:  # e.g. a store URL that does not parse
        sys.exit(f"relay: {e}")


def _files_directory_problem(config: RelayConfig) -> str | None:
    """Why file chunks could not be written under [files] directory, or None. Only checked,
    not created: makeService may run as root before twistd's --uid drops privileges."""
    if not (config.files.enabled and config.files.chunk_store == "disk"):
        return None
    directory = Path(config.files.directory).absolute()
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"[files] directory {config.files.directory}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"[files] directory {config.files.directory}: {existing} is not writable"
    return None
