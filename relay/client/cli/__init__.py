"""The `relay` command (entry point `relay.client.cli:main`): parsing, the commands, their
context, prompts and progress display (relay/client/cli/app.py runs them)."""

from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Any, NoReturn


def import_reactor_base_without_tls() -> None:
    """Import Twisted's reactor base and TCP transport without their own TLS support
    (`reactor.connectSSL`, `startTLS`), which imports pyOpenSSL: about a third of the
    command's start-up CPU (0.15 CPU-s here), for features the client never uses (its own
    TCP connections are the staple and plain HTTP). Twisted supports running without
    pyOpenSSL; these modules then offer plain TCP only. pyOpenSSL is importable again
    afterwards, so TLS through treq (https:// relays and the mailbox client:
    twisted.protocols.tls over a plain connection) works as before. Nothing happens once
    the reactor's modules were imported."""
    if "twisted.internet.posixbase" in sys.modules or "twisted.internet.tcp" in sys.modules:
        return
    missing = object()
    saved = sys.modules.get("OpenSSL", missing)
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]  # makes `import OpenSSL` fail
    try:
        import twisted.internet.posixbase  # noqa: F401 - with tcp, now without TLS
    finally:
        if saved is missing:
            del sys.modules["OpenSSL"]
        else:
            sys.modules["OpenSSL"] = saved  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> NoReturn:
    """The entry point. Ctrl-C while Python is still importing (a second or more on a busy
    machine) ends quietly with 130 too; the command installs its own handler after that."""
    def early(signum: int, frame: Any) -> None:
        try:
            sys.stderr.write("\nrelay: interrupted\n")
            sys.stderr.flush()
        finally:
            os._exit(130)

    signal.signal(signal.SIGINT, early)
    signal.signal(signal.SIGTERM, early)
    # The imports make objects that live as long as the process: collecting cycles among
    # them while importing was about a tenth of the start-up's CPU. After the imports they
    # are frozen, so that later collections do not walk them either.
    gc.disable()
    try:
        import_reactor_base_without_tls()
        from relay.client.cli.app import main as run
    finally:
        gc.freeze()
        gc.enable()

    run(argv)
