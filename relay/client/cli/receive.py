"""`relay receive` and `relay inbox`.

receive: with a code in $RELAY_CODE, that code (a code phrase: live; a drop code: the drop).
Otherwise the mailbox first (texts, live offers from contacts, drops, files; --wait polls it),
and if nothing was there, the code is asked for (never taken from the command line: the
process list would show it). Received names are checked before anything is written (see
relay/client/safe_paths.py); texts go to stdout, status to stderr.
inbox: lists what is waiting, touching nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet.task import deferLater

from relay.client import codes
from relay.client.cli.consent import Entry, consent
from relay.client.cli.context import ENV_CODE, Context
from relay.client.cli.progress import human_bytes
from relay.client.errors import (
    EXIT_FAILED,
    ChannelClosed,
    RecordError,
    Refused,
    RelayError,
    TransferError,
    UsageError,
    WrongCodeError,
)
from relay.client.live.protocol import ReceiveResult
from relay.client.live.session import live_receive
from relay.client.mailbox.client import MailboxClient
from relay.client.mailbox.drop import (
    Collected,
    Collector,
    DropGroup,
    delete_messages,
    group_drops,
)
from relay.client.mailbox.inbox import Item, open_items, read_all
from relay.client.safe_paths import DEFAULT_LIMITS, Overwrite, ReceiveLimits, printable_name
from relay.crypto import h2

POLL_INTERVAL = 2.0
# How long to wait for the drop of a sender whose live offer came too late.
DROP_AFTER_MISSED_OFFER = 60.0
_HPK_PREFIX = 8


def printable_text(text: str) -> str:
    """A message for the terminal: escapes as printable_name, but keeps newlines and tabs."""
    return "\n".join("\t".join(printable_name(p) for p in line.split("\t"))
                     for line in text.split("\n"))


def _limits(ctx: Context) -> ReceiveLimits:
    args = ctx.args
    fields: dict[str, int] = {}
    if args.max_size is not None:
        fields["max_total_bytes"] = args.max_size
        fields["max_file_bytes"] = min(args.max_size, DEFAULT_LIMITS.max_file_bytes)
    if args.max_files is not None:
        fields["max_files"] = args.max_files
    return ReceiveLimits(**fields)


def _asker(ctx: Context) -> Callable[[str], bool]:
    return lambda target: ctx.ask_yes_no(f"Overwrite {target}?")


@contextmanager
def _output_root(ctx: Context) -> Iterator[Path]:
    """Where received files go: --output (created if missing), the current folder, or for
    --stdout a private temporary folder (a live file goes to stdout as it arrives; a dead
    drop's file is kept there and shown only once verified)."""
    if ctx.args.stdout:
        root = Path(tempfile.mkdtemp(prefix="relay-receive-"))
        try:
            yield root
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    root = Path(ctx.args.output) if ctx.args.output else Path.cwd()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {printable_name(str(root))}: {e.strerror}") from None
    if not root.is_dir():
        raise UsageError(f"{printable_name(str(root))} is not a folder")
    yield root


class TextFirst:
    """--stdout of a live transfer: the binary stdout, with the offer's text (if any) written
    just before the file's first bytes, as the text came first when both were sent."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.pending: bytes | None = None

    def write(self, block: bytes) -> None:  # a worker thread, in order
        if self.pending is not None:
            self.out.write(self.pending)
            self.pending = None
        self.out.write(block)

    def flush(self) -> None:
        self.out.flush()

    def close_text(self) -> None:
        """Write the text if no byte came to carry it (an empty file, or text only)."""
        self.write(b"")
        self.flush()


class Receiver:
    """One `relay receive` run: what it wrote, for the summary and --stdout."""

    def __init__(self, ctx: Context, root: Path) -> None:
        self.ctx = ctx
        self.root = root
        self.files: list[Path] = []
        self.streamed = 0  # files written to stdout as they arrived
        self.texts: list[str] = []
        self.bytes = 0
        self.resumed = 0
        self.refused: list[str] = []

    # ---- live ------------------------------------------------------------------------------

    async def live(self, code: str, who: str = "the sender") -> ReceiveResult:
        ctx = self.ctx
        bar = ctx.progress_bar("receive")
        output = TextFirst(ctx.stdout.buffer) if ctx.args.stdout else None

        def confirm(entries: list[tuple[str, bool, int | None]], text: str | None) -> bool:
            # entries come escaped already (receive_files shows nothing unescaped)
            consent(ctx, who, entries, text)
            if output is not None and text is not None:
                output.pending = text.encode("utf-8", "replace")  # the text is the data
            return True

        try:
            result = await live_receive(ctx.reactor, ctx.relay_url, code, self.root,
                                        limits=_limits(ctx), overwrite=self._overwrite(),
                                        ask=_asker(ctx), confirm_offer=confirm, progress=bar,
                                        stdout=output, interruption=ctx.interruption)
        except ChannelClosed:
            raise WrongCodeError("the sender ended the exchange: the code is wrong, or the "
                                 "sender cancelled (a code works once; ask for a new one)") \
                from None
        except RelayError as e:
            if e.status == 404:
                raise WrongCodeError("no sender is waiting under this code (mistyped, "
                                     "already used, expired or cancelled); ask the sender "
                                     "for a new one") from None
            if e.status == 409:
                raise TransferError("someone else already used this code") from None
            raise
        except RecordError as e:
            if ctx.args.stdout:
                raise
            raise TransferError(f"the transfer was cut ({e}); what arrived is kept: ask the "
                                f"sender to send the same files again to resume") from None
        finally:
            bar.finish()
        offered = sum(os.path.getsize(p) for p in result.files) + (
            result.bytes_received if result.to_output else 0)
        self.resumed += offered - result.bytes_received
        self.files += result.files
        self.streamed += result.to_output
        self.bytes += result.bytes_received
        if result.text is not None:
            self.texts.append(result.text)
            if output is not None:
                try:
                    output.close_text()
                except BrokenPipeError:
                    raise TransferError("stdout was closed (its reader went away)") from None
            else:
                print(f"Message from {who}:\n{printable_text(result.text)}",
                      file=ctx.stdout, flush=True)
        return result

    def _overwrite(self) -> Overwrite:
        return Overwrite(self.ctx.args.overwrite)

    # ---- mailbox ---------------------------------------------------------------------------

    async def mailbox(self, client: MailboxClient, me: Any, names: dict[bytes, str],
                      keys: dict[bytes, bytes], *, poll_for: float = 0,
                      take_offers: bool = True) -> int:
        """Collect what is waiting (polling up to poll_for seconds for something to arrive);
        the number of things taken."""
        taken = 0
        deadline = time.monotonic() + poll_for
        for _attempt in range(2):
            while True:
                items = open_items(await read_all(client), me, keys.get)
                if _actionable(items) or time.monotonic() >= deadline:
                    break
                await deferLater(self.ctx.reactor, POLL_INTERVAL)
            got, missed_offer = await self._process(client, items, names, take_offers)
            taken += got
            if not missed_offer:
                break
            # The sender gave up on the live offer just before we came: it is leaving the
            # files as a drop right now, so wait for that a while.
            self.ctx.say(f"Waiting up to {DROP_AFTER_MISSED_OFFER:g} s for the sender's "
                         f"dead drop...")
            deadline = time.monotonic() + DROP_AFTER_MISSED_OFFER
        return taken

    async def _process(self, client: MailboxClient, items: list[Item],
                       names: dict[bytes, str], take_offers: bool) -> tuple[int, bool]:
        """(things taken, whether a live offer was missed)."""
        ctx = self.ctx
        taken = 0
        finished_ids = []
        for item in items:
            who = names.get(item.sender_hpk, "?")
            if item.kind == "text":
                assert item.text is not None
                note = "" if item.encrypted else " (sent unencrypted)"
                print(f"Message from {who}{note}, {_when(item.time)}:\n"
                      f"{printable_text(item.text)}", file=ctx.stdout, flush=True)
                self.texts.append(item.text)
                finished_ids.append(item.msg_id)
                taken += 1
            elif item.kind == "offer":
                finished_ids.append(item.msg_id)  # an offer works once, taken or not
        await delete_messages(client, finished_ids)
        missed = False
        for item in items:
            if item.kind != "offer" or not take_offers:
                continue
            assert item.value is not None
            code, expires = item.value.get("code"), item.value.get("expires")
            if not isinstance(code, str) or not isinstance(expires, int | float) \
                    or isinstance(expires, bool) or expires < time.time():
                continue
            who = names.get(item.sender_hpk, "?")
            ctx.say(f"{who} is sending live...")
            try:
                await self.live(code, who)
                taken += 1
            except (WrongCodeError, codes.BadCode) as e:
                ctx.say(f"The live offer from {who} is gone ({e}).")
                missed = True
        drops, standalone = group_drops(items)
        bar = ctx.progress_bar("receive")
        collector = Collector(client, self.root, limits=_limits(ctx),
                              overwrite=self._overwrite(), ask=_asker(ctx), progress=bar)
        for group in drops:
            who = names.get(group.sender_hpk, "?")
            if not group.complete:
                ctx.say(f"A drop from {who} is still arriving; try again later.")
                continue
            if not self._accepts(who, _drop_entries(group), group.text):
                continue
            try:
                got = await collector.collect_drop(group)
            finally:
                bar.finish()
            self._took(got, who)
            taken += 1
        for notice in standalone:
            who = names.get(notice.sender_hpk, "?")
            if not self._accepts(who, _notice_entries(notice), None):
                continue
            try:
                got = await collector.collect_file(notice)
            finally:
                bar.finish()
            self._took(got, who)
            taken += 1
        unknown = [i for i in items if i.kind == "unknown_sender"]
        if unknown:
            senders = sorted({b64prefix(i.sender_hpk) for i in unknown})
            ctx.say(f"{len(unknown)} message(s) from unknown senders ({', '.join(senders)}) "
                    f"left on the relay: add the sender as a contact to read them.")
        unreadable = [i for i in items if i.kind == "unreadable"]
        if unreadable:
            ctx.say(f"{len(unreadable)} message(s) could not be opened; left on the relay.")
        return taken, missed and not taken

    def _accepts(self, who: str, entries: list[Entry], text: str | None) -> bool:
        """The consent rule for a drop: refused ones stay on the relay (the sender is not
        there to be told), and `relay receive` can take them later."""
        try:
            consent(self.ctx, who, entries, text)
        except Refused as e:
            self.refused.append(str(e))
            self.ctx.say(f"Left it on the relay: {e}.")
            return False
        return True

    def _took(self, got: Collected, who: str) -> None:
        self.files += got.files
        self.bytes += got.bytes
        if got.text is not None:
            self.texts.append(got.text)
            print(f"Message from {who}:\n{printable_text(got.text)}", file=self.ctx.stdout,
                  flush=True)
        for path in got.files:
            self.ctx.say(f"Received {printable_name(str(path))} from {who}")


def _drop_entries(group: DropGroup) -> list[Entry]:
    entries = []
    for e in group.entries():
        size = e.get("size")
        entries.append((str(e.get("name")), bool(e.get("dir")),
                        size if isinstance(size, int) else 0))
    return entries


def _notice_entries(notice: Item) -> list[Entry]:
    value = notice.value or {}
    size = value.get("orig_size")
    return [(str(value.get("name")), False, size if isinstance(size, int) else 0)]


def b64prefix(hpk: bytes) -> str:
    return hpk.hex()[:_HPK_PREFIX]


def _actionable(items: list[Item]) -> bool:
    drops, standalone = group_drops(items)
    return any(i.kind in ("text", "offer") for i in items) or bool(standalone) \
        or any(g.complete for g in drops)


def _when(timestamp: float) -> str:
    if timestamp <= 0:
        return "at an unknown time"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _read_code(ctx: Context) -> str:
    code = ctx.environ.get(ENV_CODE, "").strip()
    if code:
        return code
    words = list(codes.WORDS) + [codes.DROP_PREFIX]
    line = ctx.ask_line("Code (code phrase or drop code; Tab completes words): ", words) \
        if ctx.interactive() else ctx.ask_line("", None)
    if not line:
        raise UsageError(f"no code given: type it when asked (on a terminal), pipe it to "
                         f"stdin, or set ${ENV_CODE}")
    return line


async def cmd_receive(ctx: Context) -> int:
    args = ctx.args
    if args.code_argument is not None:
        # Refused, not read with a warning: by then it is already in the process list
        # (and shell history) for every user of this machine to see, and a code works once.
        raise UsageError(f"codes are not taken from the command line (other users see "
                         f"it in the process list): run `relay receive` and type it, or "
                         f"set ${ENV_CODE}")
    if args.stdout and args.output:
        raise UsageError("--stdout and --output do not go together")
    if args.stdout and getattr(ctx.stdout, "isatty", lambda: False)():
        # Received bytes could drive the terminal (escape sequences): only to a pipe or file.
        raise UsageError("--stdout writes the received data as it is: redirect it to a file "
                         "or a pipe")
    code = ctx.environ.get(ENV_CODE, "").strip()
    if code:
        if codes.is_drop_code(code):
            codes.check_drop_code(code)
        else:
            codes.check_code(code)
    with _output_root(ctx) as root:
        receiver = Receiver(ctx, root)
        contacts = ctx.contacts().list() if not code else []
        # Without contacts nothing in the mailbox can be read: go straight to the code.
        if not code and not args.no_mailbox and (contacts or args.mailbox):
            identity = ctx.identity()
            names = {c.hpk: c.name for c in contacts}
            keys = {c.hpk: c.public_key for c in contacts}
            client = ctx.mailbox(identity.private_key)
            taken = await receiver.mailbox(client, identity.private_key, names, keys,
                                           poll_for=args.wait or 0)
            if taken:
                return _finish(ctx, receiver)
            if receiver.refused:
                raise _nothing_taken(ctx, receiver)
            if args.mailbox:
                ctx.say("Nothing waiting.")
                return 0
        if not code:
            code = _read_code(ctx)
        if codes.is_drop_code(code):
            await _receive_drop_code(ctx, receiver, code)
        else:
            codes.check_code(code)
            await receiver.live(code)
        return _finish(ctx, receiver)


async def _receive_drop_code(ctx: Context, receiver: Receiver, code: str) -> None:
    drop_sender, drop_recipient = codes.drop_identities(code)
    sender_pk = bytes(drop_sender.public_key)
    client = ctx.mailbox(drop_recipient)
    taken = await receiver.mailbox(client, drop_recipient, {h2(sender_pk): "the drop"},
                                   {h2(sender_pk): sender_pk}, take_offers=False)
    if not taken and receiver.refused:
        raise _nothing_taken(ctx, receiver)
    if not taken:
        raise WrongCodeError("nothing is waiting under this drop code (mistyped, already "
                             "collected or expired)")


def _nothing_taken(ctx: Context, receiver: Receiver) -> Refused:
    """Everything offered was refused: it stays on the relay. Why was said with each offer,
    unless -q silenced that: then the error says it."""
    why = f" ({receiver.refused[0]})" if getattr(ctx.args, "quiet", False) else ""
    return Refused(f"nothing taken; it stays on the relay{why}")


def _finish(ctx: Context, receiver: Receiver) -> int:
    if ctx.args.stdout:
        files = receiver.files
        if len(files) > 1:
            raise UsageError("--stdout takes a single file; this was several")
        if files:
            with open(files[0], "rb") as f:
                shutil.copyfileobj(f, ctx.stdout.buffer, 1024 * 1024)
            ctx.stdout.buffer.flush()
    count = len(receiver.files) + receiver.streamed
    if count or not receiver.texts:  # after a text alone, the text said it all
        summary = f"Received {count} file{'s' if count != 1 else ''}, " \
                  f"{human_bytes(receiver.bytes)}"
        if receiver.resumed:
            summary += f" (resumed: {human_bytes(receiver.resumed)} were already here)"
        ctx.say(summary + ".")
    if receiver.refused:
        # Some drops were taken, others left on the relay (no consent): a script must not
        # read that as done.
        ctx.say(f"{len(receiver.refused)} transfer(s) left on the relay; "
                f"`relay receive -y` takes them.")
        return EXIT_FAILED
    return 0


async def cmd_inbox(ctx: Context) -> int:
    identity = ctx.identity()
    contacts = ctx.contacts().list()
    names = {c.hpk: c.name for c in contacts}
    keys = {c.hpk: c.public_key for c in contacts}
    client = ctx.mailbox(identity.private_key)
    items = open_items(await read_all(client), identity.private_key, keys.get)
    if not items:
        print("Nothing waiting.", file=ctx.stdout)
        return 0
    drops, standalone = group_drops(items)
    out = ctx.stdout
    for item in items:
        who = names.get(item.sender_hpk) or f"unknown sender {b64prefix(item.sender_hpk)}"
        when = _when(item.time)
        if item.kind == "text":
            assert item.text is not None
            preview = printable_name(item.text[:60]) + ("..." if len(item.text) > 60 else "")
            print(f"{when}  {who}: message: {preview}", file=out)
        elif item.kind == "offer":
            assert item.value is not None
            expires = item.value.get("expires")
            live = isinstance(expires, int | float) and expires > time.time()
            state = f"waiting {int(expires - time.time())} s more" if live else "expired"
            summary = printable_name(str(item.value.get("summary", ""))[:80])
            print(f"{when}  {who}: live offer of {summary} ({state})", file=out)
        elif item.kind == "file" and item in standalone:
            assert item.value is not None
            name = printable_name(str(item.value.get("name"))[:200])
            size = item.value.get("orig_size")
            size_text = human_bytes(size) if isinstance(size, int) else "?"
            print(f"{when}  {who}: file {name} ({size_text})", file=out)
        elif item.kind == "unknown_sender":
            print(f"{when}  {who}: a message (add the sender as a contact to read it)",
                  file=out)
        elif item.kind == "unreadable":
            print(f"{when}  {who}: a message that does not open", file=out)
    for group in drops:
        who = names.get(group.sender_hpk, "?")
        entries = group.entries() if group.complete else []
        files = [e for e in entries if not e.get("dir")]
        size = sum(e.get("size", 0) for e in files if isinstance(e.get("size"), int))
        state = (f"{len(files)} file{'s' if len(files) != 1 else ''}, {human_bytes(size)}"
                 if group.complete else "still arriving")
        print(f"drop from {who}: {state}" + (" and a text" if group.text else ""), file=out)
    return 0
