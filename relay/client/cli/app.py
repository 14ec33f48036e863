"""The `relay` command: send and receive files through a relay, live or as dead drops.

`main()` parses the command line, runs the command on the Twisted reactor and exits with a
documented code; every error a user can cause is one line on stderr, never a traceback.
`run(ctx)` is the same minus the process: tests drive it in-process.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from twisted.internet.defer import CancelledError

from relay import __version__
from relay.client.cli import prompt
from relay.client.cli.context import (
    CONFIG_FILE,
    DEFAULT_CODE_WAIT,
    DEFAULT_OFFER_WAIT,
    DEFAULT_RELAY_URL,
    ENV_CODE,
    ENV_URL,
    Context,
)
from relay.client.cli.receive import cmd_inbox, cmd_receive
from relay.client.cli.send import cmd_message, cmd_send
from relay.client.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ClientError,
    Interrupted,
    exit_code_for,
)
from relay.client.interrupt import HOOK_TIMEOUT
from relay.client.local.home import ENV_HOME
from relay.client.safe_paths import printable_name
from relay.heap import keep_big_buffers

# After an interruption, how long the command may tidy up (remove a stream's partial
# file, flush what the peer was told) before the process stops.
STOP_GRACE = 0.5

EPILOG = f"""\
exit codes:
  0    done
  1    the transfer failed or was refused (nobody came, declined, unsafe names, exists)
  2    usage: bad arguments, unknown contact, malformed code, bad identity or config file
  3    the relay is unreachable or answered with an error
  4    verification failed: a checksum, size or encrypted chunk did not check out
  5    wrong code: the code phrase or drop code did not match (a code works once)
  6    the other side cancelled (Ctrl-C there)
  130  interrupted (Ctrl-C, SIGTERM): the other side is told

Common options (--relay, --home, -q, --progress) go before or after the command.
Incoming transfers are described and asked about (Accept? [y/N]) unless -y; without a
terminal and without -y they are refused.

environment:
  {ENV_URL}    relay URL (after --relay; before the config file; default {DEFAULT_RELAY_URL})
  {ENV_CODE}   the code for `relay receive` (codes are never taken from the command line)
  {ENV_HOME}   where the identity, contacts and {CONFIG_FILE} live
               (default $XDG_CONFIG_HOME/relay or ~/.config/relay)

config file ({CONFIG_FILE} in the relay home, TOML):
  relay_url = "https://relay.example.org"
  offer_wait = {DEFAULT_OFFER_WAIT:g}   # seconds a contact has to take a live offer
  code_wait = {DEFAULT_CODE_WAIT:g}    # seconds a code-phrase sender waits
"""

_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmg]?)(?:i?b)?(?:/s)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def _byte_count(text: str) -> float:
    match = _RATE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (like 500k, 10M, 2G)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 7 * 24 * 3600:
        raise argparse.ArgumentTypeError("seconds must be between 0 and a week")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"relay: error: {printable_name(message)}\n")


def _global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--relay, --home, -q and --progress: before the command, or (defaults=False: then a
    missing option leaves what was given before the command) anywhere after it."""
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--relay", metavar="URL", default=default(None),
                        help=f"the relay (default: ${ENV_URL}, the config file, or "
                             f"{DEFAULT_RELAY_URL})")
    parser.add_argument("--home", metavar="DIR", default=default(None),
                        help=f"relay home (default: ${ENV_HOME})")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="print nothing but codes and errors")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true",
                          default=default(None),
                          help="show the progress bar even when stderr is not a terminal")
    progress.add_argument("--no-progress", dest="progress", action="store_false",
                          default=default(None))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="relay", epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Send files and messages end-to-end encrypted through a "
                                 "relay: live by code phrase, or as dead drops for contacts.")
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    _global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    send = commands.add_parser(
        "send", help="send files, folders, stdin or a text",
        description="Send by code phrase (live; the receiver types the code), or with --to "
                    "to a contact (live if their client takes it within --wait, else a dead "
                    "drop in their mailbox).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    send.add_argument("paths", nargs="*", metavar="PATH", help="files and folders; - is stdin")
    send.add_argument("--text", help="a short text message (alone or with files)")
    send.add_argument("--to", metavar="NAME", help="a contact: offer live, then drop")
    send.add_argument("--wait", type=_seconds, metavar="SECONDS",
                      help=f"how long to wait for the receiver (default {DEFAULT_CODE_WAIT:g}; "
                           f"with --to {DEFAULT_OFFER_WAIT:g}, and 0 drops at once)")
    send.add_argument("--drop", action="store_true",
                      help="if nobody comes within --wait, leave a dead drop and print a "
                           "drop code")
    send.add_argument("--name", help="the file name for stdin (default stdin); stdin is "
                                     "streamed live as it is read (never resumed)")
    send.add_argument("--limit-rate", type=_byte_count, metavar="RATE",
                      help="send at most RATE bytes/s (like 500k, 10M)")

    receive = commands.add_parser(
        "receive", help="receive by code, or collect your mailbox",
        description=f"Without ${ENV_CODE}: collect the mailbox (messages, live offers and "
                    f"drops from contacts); if nothing is there, ask for a code (a code "
                    f"phrase or a drop code).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    # Not an option: a code given here is refused with a hint (see cmd_receive).
    receive.add_argument("code_argument", nargs="?", metavar="CODE", help=argparse.SUPPRESS)
    receive.add_argument("-o", "--output", metavar="DIR", help="where to write (default: .)")
    receive.add_argument("--stdout", action="store_true",
                         help="write the received file to stdout: live, as it arrives (its "
                              "SHA-256 is checked at the end and a mismatch or a cut exits "
                              "4, but what was already written cannot be taken back); a "
                              "dead drop's file once verified")
    receive.add_argument("--overwrite", choices=["never", "ask", "always"], default="never",
                         help="existing files: never (default), ask, always")
    receive.add_argument("-y", "--yes", action="store_true", help="accept without asking")
    where = receive.add_mutually_exclusive_group()
    where.add_argument("--mailbox", action="store_true", help="only collect the mailbox")
    where.add_argument("--no-mailbox", action="store_true", help="only receive by code")
    receive.add_argument("--wait", type=_seconds, metavar="SECONDS",
                         help="poll the mailbox this long for something to arrive")
    receive.add_argument("--max-size", type=lambda t: int(_byte_count(t)), metavar="SIZE",
                         help="refuse offers bigger than SIZE in all")
    receive.add_argument("--max-files", type=_positive_int, metavar="N",
                         help="refuse offers of more than N entries")

    commands.add_parser("inbox", help="list what waits in your mailbox (takes nothing)",
                        description="List the messages, offers and drops that wait for you "
                        "on the relay, with who sent them and when; nothing is taken or "
                        "deleted (`relay receive` collects them).", parents=[common])

    message = commands.add_parser("message", help="leave a short text for a contact",
                                  description="Leave an end-to-end encrypted text in a "
                                  "contact's mailbox; they read it with `relay receive`.",
                                  parents=[common])
    message.add_argument("--to", metavar="NAME", required=True)
    message.add_argument("text", nargs="+", metavar="TEXT", help="the message; - reads stdin")

    commands.add_parser("identity", aliases=["id"], parents=[common],
                        help="show your public key and fingerprint (created on first use)",
                        description="Show your public key (give it to your contacts: `relay "
                        "contacts add NAME KEY` on their side) and its fingerprint (compare "
                        "it with theirs). The key pair is created on first use.")

    contacts = commands.add_parser("contacts", help="add, list or remove contacts",
                                   description="Your contacts: names for public keys, to "
                                   "send to (`--to NAME`) and to know who sent what.",
                                   parents=[common])
    contact_commands = contacts.add_subparsers(dest="contacts_command", metavar="ACTION",
                                               parser_class=_Parser)
    contact_commands.required = True
    add = contact_commands.add_parser("add", help="add a contact by public key",
                                      parents=[common])
    add.add_argument("name")
    add.add_argument("public_key", metavar="PUBLIC_KEY", help="as `relay identity` shows it")
    add.add_argument("--replace", action="store_true", help="replace a contact's key")
    contact_commands.add_parser("list", help="list contacts", parents=[common])
    remove = contact_commands.add_parser("remove", help="remove a contact", parents=[common])
    remove.add_argument("name")
    return parser


# ---- small commands ------------------------------------------------------------------------

async def cmd_identity(ctx: Context) -> int:
    identity = ctx.identity()
    print(f"Public key:  {identity.public_key_b64}\nFingerprint: {identity.fingerprint}",
          file=ctx.stdout)
    ctx.say("Give the public key to your contacts; compare fingerprints to be sure.")
    return EXIT_OK


async def cmd_contacts(ctx: Context) -> int:
    book = ctx.contacts()
    action = ctx.args.contacts_command
    if action == "add":
        contact = book.add(ctx.args.name, ctx.args.public_key, replace=ctx.args.replace)
        print(f"Added {contact.name}, fingerprint {contact.fingerprint}", file=ctx.stdout)
        ctx.say("Compare the fingerprint with the one your contact sees in `relay identity`.")
    elif action == "list":
        contacts = book.list()
        for contact in contacts:
            print(f"{contact.name:<24} {contact.fingerprint}", file=ctx.stdout)
        if not contacts:
            ctx.say("No contacts yet: `relay contacts add NAME PUBLIC_KEY`.")
    else:
        contact = book.remove(ctx.args.name)
        print(f"Removed {contact.name}", file=ctx.stdout)
    return EXIT_OK


COMMANDS: dict[str, Callable[[Context], Awaitable[int]]] = {
    "send": cmd_send, "receive": cmd_receive, "inbox": cmd_inbox, "message": cmd_message,
    "identity": cmd_identity, "id": cmd_identity, "contacts": cmd_contacts,
}


async def run(ctx: Context) -> int:
    """Run the parsed command; the exit code. ClientErrors become one line on stderr, an
    interruption (ctx.interruption fired) the one line "relay: interrupted"."""
    try:
        ctx.settings  # noqa: B018 - a broken config file is reported whatever the command
        return await COMMANDS[ctx.args.command](ctx)
    except BaseException as e:  # noqa: BLE001 - every ending is mapped to an exit code
        return _ending(ctx, e)


def _ending(ctx: Context, error: BaseException) -> int:
    if ctx.interruption.fired or isinstance(error, Interrupted | CancelledError
                                             | KeyboardInterrupt):
        # Whatever the interrupted call raised (a cancelled request, a closed connection)
        # is a consequence of the interruption, not news.
        _say_line(ctx.stderr, "relay: interrupted")
        return EXIT_INTERRUPTED
    if isinstance(error, BrokenPipeError):
        # stdout's reader went away (`relay identity | head -1`): it took what it wanted.
        _quiet_stdout(ctx)
        return EXIT_OK
    if isinstance(error, ClientError):
        _say_line(ctx.stderr, f"relay: error: {printable_name(str(error))}")
        return exit_code_for(error)
    if isinstance(error, OSError):  # the local disk: a full disk, a read-only folder...
        where = f" ({printable_name(str(error.filename))})" if error.filename else ""
        _say_line(ctx.stderr, f"relay: error: {error.strerror or error}{where}")
        return EXIT_FAILED
    raise error


def _say_line(stream: Any, line: str) -> None:
    try:
        print(line, file=stream, flush=True)
    except OSError:
        pass  # stderr is gone too: the exit code says it


def _quiet_stdout(ctx: Context) -> None:
    """Replace a stdout whose reader went away, so that the final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, ctx.stdout.fileno())
        os.close(devnull)
    except (OSError, AttributeError, ValueError):
        pass


def _install_interrupt(reactor: Any, ctx: Context, running: dict[str, Any]) -> None:
    """Ctrl-C (and SIGTERM): at a prompt, KeyboardInterrupt right there; otherwise tell
    the peer (ctx.interruption), stop the command, exit 130. A second Ctrl-C, or the
    hooks taking over HOOK_TIMEOUT, ends the process at once."""
    # A signal may arrive in a worker thread; the wakeup fd wakes the reactor's poll so
    # that the handler runs on the main thread without delay.
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    reactor.addReader(_Drain(read_end))

    def interrupt() -> None:
        if ctx.interruption.fired:
            _hard_exit()
        settled = ctx.interruption.fire()
        finished = running.get("command")

        def stop_command(_: Any) -> None:
            if finished is not None and not finished.called:
                finished.cancel()
            # What the peer was told is written; its own closing handshake is not awaited.
            reactor.callLater(STOP_GRACE, _stop_reactor, reactor)

        settled.addBoth(stop_command)
        reactor.callLater(HOOK_TIMEOUT + 2, _hard_exit)

    def on_signal(signum: int, frame: Any) -> None:
        prompt.state.interrupted = True
        if prompt.state.prompting:
            raise KeyboardInterrupt
        reactor.callFromThread(interrupt)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


class _Drain:
    """Reads the signal wakeup pipe (its bytes mean nothing: the handler does the work)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        try:
            while os.read(self.fd, 512):
                pass
        except BlockingIOError:
            pass

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "signals"


def _stop_reactor(reactor: Any) -> None:
    if reactor.running:
        reactor.stop()


def _hard_exit() -> None:
    _say_line(sys.stderr, "relay: interrupted")
    os._exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    keep_big_buffers()  # fewer page faults per record of a live transfer (see heap.py)
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    outcome: dict[str, Any] = {}
    ctx = Context(args=args, reactor=reactor)

    running: dict[str, Any] = {}
    # Before the command starts (it may prompt at once), and whatever the parent did with
    # SIGINT (a shell's background job inherits it ignored).
    _install_interrupt(reactor, ctx, running)

    def start() -> None:
        finished = running["command"] = Deferred.fromCoroutine(run(ctx))

        def done(code: int) -> None:
            outcome["code"] = code

        def failed(failure: Any) -> None:
            outcome["code"] = EXIT_FAILED
            # A bug, not a user mistake: say so, with the details for a report.
            print("relay: internal error (please report):", file=sys.stderr)
            traceback.print_exception(failure.type, failure.value, failure.getTracebackObject())

        def stop(_: Any) -> None:
            if ctx.interruption.fired:  # the peer is being told: wait for that
                ctx.interruption.settled.addBoth(lambda _: _stop_reactor(reactor))
            else:
                _stop_reactor(reactor)

        finished.addCallbacks(done, failed)
        finished.addBoth(stop)

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    if "code" not in outcome:  # stopped before the command could say it
        _say_line(sys.stderr, "relay: interrupted")
    code = outcome.get("code", EXIT_INTERRUPTED)
    if ctx.interruption.fired:
        code = EXIT_INTERRUPTED
    try:
        sys.stdout.flush()
    except OSError:
        pass  # stdout's reader went away: the exit code already says how the run ended
    # os._exit skips waiting on the thread pool (a proof-of-work search that was cancelled).
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(code)


if __name__ == "__main__":
    main()
