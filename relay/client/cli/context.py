"""What every `relay` subcommand needs: its streams, environment, home, relay URL, reactor,
and the user's settings; kept in one object so commands can be run (and tested) in-process.

The relay URL is, first found: --relay, $RELAY_URL, `relay_url` in the home's config.toml,
else DEFAULT_RELAY_URL (a relay on this machine, `twistd relay`'s default port).
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import attrs

from relay.client.cli import prompt
from relay.client.cli.progress import ProgressBar
from relay.client.errors import Interrupted, UsageError
from relay.client.interrupt import Interruption
from relay.client.local.contacts import ContactBook
from relay.client.local.home import relay_home
from relay.client.local.identity import Identity, load_or_create_identity
from relay.client.mailbox.client import MailboxClient
from relay.client.safe_paths import printable_name

DEFAULT_RELAY_URL = "http://127.0.0.1:8080"
ENV_URL = "RELAY_URL"
ENV_CODE = "RELAY_CODE"
CONFIG_FILE = "config.toml"
# Seconds a contact's client has to take a live offer before the files go as a dead drop.
DEFAULT_OFFER_WAIT = 60.0
# Seconds a code-phrase sender waits for its recipient.
DEFAULT_CODE_WAIT = 600.0
_MAX_CONFIG = 64 * 1024
_SETTINGS = {"relay_url": str, "offer_wait": (int, float), "code_wait": (int, float)}


@attrs.frozen
class Settings:
    relay_url: str | None = None
    offer_wait: float = DEFAULT_OFFER_WAIT
    code_wait: float = DEFAULT_CODE_WAIT


def load_settings(home: Path) -> Settings:
    path = home / CONFIG_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CONFIG + 1)
    except FileNotFoundError:
        return Settings()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    try:
        if len(data) > _MAX_CONFIG:
            raise ValueError("too large")
        values = tomllib.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not valid TOML ({e})") from None
    for key, value in values.items():
        kind = _SETTINGS.get(key)
        if kind is None:
            raise UsageError(f"{path}: unknown setting {printable_name(key)!r} "
                             f"(known: {', '.join(_SETTINGS)})")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UsageError(f"{path}: {key} has the wrong type")
        if key.endswith("_wait") and value < 0:
            raise UsageError(f"{path}: {key} must be 0 or more")
    return Settings(**values)


def check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url) > 2000:
        raise UsageError(f"the relay URL must start with http:// or https:// "
                         f"(got {printable_name(url[:80])!r})")
    return url.rstrip("/")


@attrs.define
class Context:
    args: Any
    reactor: Any
    stdin: TextIO = attrs.field(factory=lambda: sys.stdin)
    stdout: TextIO = attrs.field(factory=lambda: sys.stdout)
    stderr: TextIO = attrs.field(factory=lambda: sys.stderr)
    environ: Mapping[str, str] = attrs.field(factory=lambda: dict(os.environ))
    _settings: Settings | None = None
    interruption: Interruption = attrs.field(
        default=attrs.Factory(lambda self: Interruption(self.reactor), takes_self=True))

    @property
    def home(self) -> Path:
        if getattr(self.args, "home", None):
            return Path(self.args.home).expanduser()
        return relay_home(self.environ)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.home)
        return self._settings

    @property
    def relay_url(self) -> str:
        url = (getattr(self.args, "relay", None) or self.environ.get(ENV_URL)
               or self.settings.relay_url or DEFAULT_RELAY_URL)
        return check_url(url)

    def say(self, text: str) -> None:
        """A status line for the human, on stderr (stdout carries data and messages)."""
        if not getattr(self.args, "quiet", False):
            print(text, file=self.stderr, flush=True)

    def identity(self) -> Identity:
        identity, created = load_or_create_identity(self.home)
        if created:
            self.say(f"Created your identity in {printable_name(str(self.home))}; "
                     f"fingerprint {identity.fingerprint}")
        return identity

    def contacts(self) -> ContactBook:
        return ContactBook(self.home)

    def mailbox(self, identity_key: Any) -> MailboxClient:
        return MailboxClient(self.relay_url, identity_key, reactor=self.reactor)

    def progress_bar(self, label: str = "") -> ProgressBar:
        forced = getattr(self.args, "progress", None)
        enabled = None if forced is None else forced
        if getattr(self.args, "quiet", False):
            enabled = False
        return ProgressBar(self.stderr, enabled=enabled, label=label)

    def interactive(self) -> bool:
        """Whether someone can answer a question (stdin is a terminal)."""
        return prompt.is_terminal(self.stdin)

    def ask_yes_no(self, question: str) -> bool:
        """y/N on the terminal; False when nobody can answer. Interrupted on Ctrl-C."""
        with self._interruptible():
            return prompt.ask_yes_no(self.stdin, self.stderr, question)

    def ask_line(self, question: str, words: Any = None) -> str | None:
        """A line typed by the user (Tab completes words); None at end of input."""
        with self._interruptible():
            return prompt.ask_line(self.stdin, self.stderr, question, words)

    @contextmanager
    def _interruptible(self) -> Iterator[None]:
        """Ctrl-C at a prompt interrupts the command like anywhere else: the peer is told."""
        try:
            yield
        except Interrupted:
            self.interruption.fire()
            raise
