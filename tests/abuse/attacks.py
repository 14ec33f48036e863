"""The attacks of issues 8 and 9, each a function run against a live relay (a Target), and
the runner that measures the relay around it: RSS, fds and CPU before and at their peak, and
a bystander (a fresh client from another address) before, during and after.

The tests in tests/abuse assert on the Report; bench/abuse.py prints it as a table. Counts
and times are parameters: the tests use the issue's numbers where they fit in seconds.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

from relay.crypto import b64encode
from tests.abuse.clients import (
    ATTACKER,
    BYSTANDER,
    Bystander,
    Crowd,
    Http,
    Mailbox,
    Probe,
    address,
    bystander,
    connect,
    http_request,
    join,
    pair,
    pause,
    post_json,
)
from tests.abuse.relays import Target

KIB = 1024
MIB = 1024 * KIB
# An attack stops early once the relay has grown this much: the test has failed by then,
# and the machine is shared.
SAFETY_CEILING = 256 * MIB


@attrs.define(repr=False)
class Report:
    name: str
    store: str
    rss_before: int = 0
    rss_peak: int = 0
    fds_before: int = 0
    fds_peak: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    bystanders: dict[str, Bystander] = attrs.Factory(dict)
    facts: dict[str, Any] = attrs.Factory(dict)

    @property
    def rss_growth(self) -> int:
        return self.rss_peak - self.rss_before

    @property
    def cpu_share(self) -> float:
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def __repr__(self) -> str:
        bystanders = "; ".join(f"{when} {b}" for when, b in self.bystanders.items())
        return (f"{self.name}[{self.store}]: RSS +{self.rss_growth / MIB:.1f} MiB, fds "
                f"{self.fds_before}->{self.fds_peak}, CPU {self.cpu_share:.0%} of a core over "
                f"{self.wall_seconds:.1f}s; bystander {bystanders}; facts {self.facts}")

    def bystanders_ok(self, limit: float) -> list[str]:
        """What went wrong for the bystanders (empty when each was served within limit)."""
        return [f"{when}: {b}" for when, b in self.bystanders.items()
                if not b.ok or b.seconds > limit]


class Context:
    """What an attack gets: the target, a sampler of the relay's peak RSS and fds, and the
    bystander checks. `rebase()` restarts the measurements after the attack's own set-up
    (filling a mailbox, joining channels) so that only the attack proper is charged."""

    def __init__(self, target: Target, report: Report, rendezvous: bool) -> None:
        self.target = target
        self.report = report
        self.rendezvous = rendezvous
        self.probe = Probe(target.pid)
        self._stop = threading.Event()
        self.exceeded = threading.Event()
        self._cpu_start = 0.0
        self._wall_start = 0.0
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    @property
    def port(self) -> int:
        return self.target.port

    @property
    def staple_port(self) -> int:
        return self.target.staple_port

    def rebase(self) -> None:
        self.report.rss_before = self.report.rss_peak = self.probe.rss()
        self.report.fds_before = self.report.fds_peak = self.probe.fds()
        self._cpu_start = self.probe.cpu()
        self._wall_start = time.monotonic()

    def cpu_share(self) -> float:
        """The relay's CPU time since rebase(), as a share of one core."""
        wall = time.monotonic() - self._wall_start
        return (self.probe.cpu() - self._cpu_start) / wall if wall > 0 else 0.0

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                rss, fds = self.probe.rss(), self.probe.fds()
            except OSError:  # the relay died: the test will say so
                return
            self.report.rss_peak = max(self.report.rss_peak, rss)
            self.report.fds_peak = max(self.report.fds_peak, fds)
            if rss - self.report.rss_before > SAFETY_CEILING:
                self.exceeded.set()

    def hold(self, seconds: float, tick: Callable[[], None] | None = None,
             every: float = 0.25) -> None:
        """Let the attack run for seconds (calling tick every so often), or until the relay
        has grown past the safety ceiling."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.exceeded.is_set():
            if tick:
                tick()
            pause(min(every, deadline - time.monotonic()))

    def bystander(self, when: str = "during") -> Bystander:
        result = bystander(self.port, BYSTANDER, self.rendezvous)
        self.report.bystanders[when] = result
        return result

    def start(self) -> None:
        self.rebase()
        self._sampler.start()

    def finish(self) -> None:
        self.report.cpu_seconds = self.probe.cpu() - self._cpu_start
        self.report.wall_seconds = time.monotonic() - self._wall_start
        self._stop.set()
        self._sampler.join()


Attack = Callable[..., dict[str, Any]]


def run(target: Target, attack: Attack, *, rendezvous: bool = True, after: float = 0.5,
        **params: Any) -> Report:
    """Bystander, attack (measured), bystander again once the attack has ended."""
    report = Report(attack.__name__, target.store)
    context = Context(target, report, rendezvous)
    report.bystanders["before"] = bystander(target.port, BYSTANDER, rendezvous)
    context.start()
    try:
        report.facts = attack(context, **params)
    except OSError as e:
        if target.alive():
            raise
        # A refused or reset connection says little by itself: name the relay's end.
        code = target.process.process.returncode  # type: ignore[union-attr]
        raise AssertionError(f"the relay exited (status {code}) during the attack ({e}); "
                             f"its log ends:\n{target.log()[-3000:]}") from e
    finally:
        context.finish()
    pause(after)
    report.bystanders["after"] = bystander(target.port, BYSTANDER, rendezvous)
    return report


# -- issue 8: output that is never read -----------------------------------------------------


def _send_unread(ctx: Context, sock: socket.socket, data: bytes, seconds: float,
                 tick: Callable[[], None] | None = None) -> int:
    """Send as much of data as the relay takes within seconds (it may stop reading); the
    bytes sent. The socket is never read."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < deadline and not ctx.exceeded.is_set():
        try:
            sent += sock.send(data[sent:sent + 256 * KIB])
        except BlockingIOError:
            pause(0.02)
        except OSError:
            break
        if tick:
            tick()
    return sent


def _unread_socket(port: int) -> socket.socket:
    sock = connect(port, ATTACKER)
    # A small receive window: the relay's answers back up at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def pipelined_entropy(ctx: Context, count: int = 1000, size: int = 512000,
                      seconds: float = 4.0) -> dict[str, Any]:
    """One connection sends count pipelined getEntropy commands and never reads."""
    mailbox = Mailbox(ctx.port).connect()
    # One answer read in full first: its own cost (buffers the heap keeps) is not the attack's.
    warm_up, _ = mailbox.command({"cmd": "getEntropy", "size": size})
    requests = b"".join(http_request("command", mailbox.command_body(
        {"cmd": "getEntropy", "size": size})) for _ in range(count))
    sock = _unread_socket(ctx.port)
    try:
        ctx.rebase()
        sent = _send_unread(ctx, sock, requests, seconds / 2)
        ctx.hold(seconds / 4)
        ctx.bystander("during")
        ctx.hold(seconds / 4)
        return {"requests": count, "sent_bytes": sent, "request_bytes": len(requests),
                "warm_up": warm_up}
    finally:
        sock.close()
        mailbox.close()


def pipelined_downloads(ctx: Context, messages: int = 80, message_size: int = 150 * KIB,
                        count: int = 20, seconds: float = 4.0) -> dict[str, Any]:
    """Fill one mailbox with big messages, then pipeline count downloads of it, never read."""
    owner = Mailbox(ctx.port).connect()
    try:
        stored = Counter(owner.upload(owner.hpk, message_size) for _ in range(messages))
        # One download read in full first: its own cost is not the attack's.
        warm_up, answer = owner.command({"cmd": "download"})
        requests = b"".join(http_request("command", owner.command_body({"cmd": "download"}))
                            for _ in range(count))
        sock = _unread_socket(ctx.port)
        try:
            ctx.rebase()
            sent = _send_unread(ctx, sock, requests, seconds / 2)
            ctx.hold(seconds / 4)
            ctx.bystander("during")
            ctx.hold(seconds / 4)
        finally:
            sock.close()
        return {"uploads": dict(stored), "mailbox_bytes": stored[200] * message_size,
                "answer_bytes": len(answer), "warm_up": warm_up, "requests": count,
                "sent_bytes": sent}
    finally:
        owner.close()


# -- issue 8: slow clients ---------------------------------------------------------------------


def slow_headers(ctx: Context, count: int = 200, interval: float = 2.0, seconds: float = 8.0,
                 addresses: int = 10) -> dict[str, Any]:
    """count connections each sending one header line every interval (never finishing the
    request); how many the relay still holds after `seconds`."""
    crowd = Crowd()
    sources = [address(20, i) for i in range(addresses)]
    try:
        opened = crowd.open(ctx.port, sources, count, b"POST /command HTTP/1.1\r\nHost: x\r\n")
        lines = iter(range(1_000_000))
        next_line = [time.monotonic() + interval]

        def drip() -> None:
            if time.monotonic() >= next_line[0]:
                crowd.send(f"X-Slow-{next(lines)}: 1\r\n".encode())
                next_line[0] += interval

        ctx.hold(1.0, drip)
        ctx.bystander("during")
        ctx.hold(seconds - 1.0 - ctx.report.bystanders["during"].seconds, drip)
        statuses = crowd.statuses()
        return {"opened": opened, "open_at_end": statuses["pending"],
                "statuses": dict(statuses), "seconds": seconds}
    finally:
        crowd.close()


def slow_bodies(ctx: Context, count: int = 300, announced: int = 1 * MIB,
                drip: int = 12 * KIB, interval: float = 0.5, seconds: float = 10.0,
                addresses: int = 10) -> dict[str, Any]:
    """count /command requests announcing `announced` bytes of body, each sending drip bytes
    every interval (never the whole body); the relay's RSS and who is still held at the end."""
    crowd = Crowd()
    sources = [address(21, i) for i in range(addresses)]
    head = (f"POST /command HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {announced}\r\n\r\n").encode()
    chunk = b"A" * drip
    try:
        opened = crowd.open(ctx.port, sources, count, head)
        next_drip = [0.0]

        def feed() -> None:
            if time.monotonic() >= next_drip[0]:
                crowd.send(chunk)
                next_drip[0] = time.monotonic() + interval

        ctx.hold(2.0, feed, every=0.05)
        ctx.bystander("during")
        ctx.hold(seconds - 2.0 - ctx.report.bystanders["during"].seconds, feed, every=0.05)
        statuses = crowd.statuses()
        return {"opened": opened, "open_at_end": statuses["pending"],
                "statuses": dict(statuses), "seconds": seconds}
    finally:
        crowd.close()


# What the relay logs when it refuses connections at a limit (fds or max_connections).
LIMIT_LOG = re.compile(r"EMFILE|Too many open files|closing \w+ connections|"
                       r"closed \d+ \w+ connections", re.IGNORECASE)


def connection_flood(ctx: Context, count: int = 1200, addresses: int = 40,
                     seconds: float = 4.0) -> dict[str, Any]:
    """Open count idle connections from many addresses (against a relay started with a low
    fd limit). A bystander connection opened before must keep working; the relay must log
    the limit once per interval, not once per connection."""
    keeper = Http(ctx.port, BYSTANDER, timeout=5.0)
    crowd = Crowd()
    try:
        status, _, _ = keeper.post("start_session", b64encode(os.urandom(32)).encode())
        assert status == 200, status
        log_before = len(LIMIT_LOG.findall(ctx.target.log()))
        opened = crowd.open(ctx.port, [address(22, i) for i in range(addresses)], count,
                            timeout=1.0)
        ctx.hold(seconds / 2)
        cpu_before = ctx.probe.cpu()
        ctx.hold(seconds / 2)
        cpu_share = (ctx.probe.cpu() - cpu_before) / (seconds / 2)
        started = time.monotonic()
        try:
            status, _, _ = keeper.post("start_session", b64encode(os.urandom(32)).encode())
            keeper_result = f"{status}"
        except OSError as e:
            keeper_result = f"{type(e).__name__}"
        keeper_seconds = time.monotonic() - started
        ctx.bystander("during")
        statuses = crowd.statuses()
        limit_lines = len(LIMIT_LOG.findall(ctx.target.log())) - log_before
        return {"opened": opened, "refused_connects": crowd.refused,
                "statuses": dict(statuses), "keeper": keeper_result,
                "keeper_seconds": keeper_seconds, "limit_log_lines": limit_lines,
                "cpu_share_at_limit": cpu_share}
    finally:
        crowd.close()
        keeper.close()


def per_client_connections(ctx: Context, count: int = 300, seconds: float = 1.5
                           ) -> dict[str, Any]:
    """count idle connections from one address; how many the relay keeps."""
    return _crowd_held(ctx, count, b"", seconds)


def _crowd_held(ctx: Context, count: int, first: bytes, seconds: float) -> dict[str, Any]:
    """count connections from the attacker's address, each sending `first`: after
    `seconds`, how many the relay holds (neither answered nor closed)."""
    crowd = Crowd()
    try:
        opened = crowd.open(ctx.port, [ATTACKER], count, first, timeout=1.0)
        ctx.hold(seconds)
        ctx.bystander("during")
        statuses = crowd.statuses()
        return {"opened": opened, "held": statuses["pending"], "statuses": dict(statuses)}
    finally:
        crowd.close()


# -- issue 8: long-polls --------------------------------------------------------------------------


def _wait_request(channel: str, uuid: str, wait: float = 30.0) -> bytes:
    return http_request("channel", json.dumps({"channel": channel, "uuid": uuid,
                                               "wait": wait}).encode(),
                        content_type="application/json")


def long_poll_flood(ctx: Context, count: int = 5000, settle: float = 2.0) -> dict[str, Any]:
    """count /channel waits from one address on one channel: how many the relay holds."""
    status, sender = join(ctx.port, ATTACKER)
    assert status == 200, (status, sender)
    return _crowd_held(ctx, count, _wait_request(sender["channel"], sender["uuid"]), settle)


def _settle(ctx: Context, connections: int, most: float = 10.0) -> None:
    """Wait until the relay holds the connections (its fd count stops rising near
    connections), then a little longer, so no request is still being taken in."""
    deadline = time.monotonic() + most
    before = -1
    while time.monotonic() < deadline:
        fds = ctx.probe.fds()
        if fds >= connections and fds == before:
            break
        before = fds
        pause(0.25)
    pause(0.5)


def idle_waiters(ctx: Context, addresses: int = 20, channels_per_address: int = 50,
                 seconds: float = 5.0) -> dict[str, Any]:
    """addresses x channels_per_address channels, both roles long-polling each: what the
    relay spends (CPU) while nothing happens."""
    requests = []
    refused: Counter = Counter()
    for a in range(addresses):
        source = address(23, a)
        http = Http(ctx.port, source)
        try:
            for _ in range(channels_per_address):
                status, sender = join(ctx.port, source, http=http)
                if status != 200:
                    refused[status] += 1
                    continue
                status, recipient = join(ctx.port, source, "recipient", sender["channel"],
                                         http=http)
                if status != 200:
                    refused[status] += 1
                    continue
                requests.append((source, _wait_request(sender["channel"], sender["uuid"])))
                requests.append((source, _wait_request(sender["channel"], recipient["uuid"])))
        finally:
            http.close()
    crowd = Crowd()
    try:
        for source, request in requests:
            crowd.open(ctx.port, [source], 1, request)
        _settle(ctx, len(requests))
        ctx.rebase()
        ctx.hold(seconds / 2)
        ctx.bystander("during")
        ctx.hold(seconds / 2 - ctx.report.bystanders["during"].seconds)
        statuses = crowd.statuses()
        return {"waiters": len(requests), "held": statuses["pending"],
                "statuses": dict(statuses), "join_refusals": dict(refused),
                "cpu_share": ctx.cpu_share()}
    finally:
        crowd.close()


# -- issue 8: stapled pairs and channels --------------------------------------------------------


def stuck_pairs(ctx: Context, addresses: int = 8, seconds: float = 5.0,
                ping: float = 0.3) -> dict[str, Any]:
    """Clients from several addresses staple as many pairs as they can and keep them alive
    (a byte each way every `ping` seconds) while channels expire: the most pairs alive at
    once, in all and per address."""
    sources = [address(24, i) for i in range(addresses)]
    pairs: list[tuple[str, list[socket.socket]]] = []
    outcomes: Counter = Counter()
    most = 0
    most_per_client = 0

    def keep_alive() -> None:
        for entry in list(pairs):
            source, socks = entry
            try:
                for sock in socks:
                    sock.setblocking(False)
                    sock.send(b".")
                for sock in socks:
                    try:
                        if sock.recv(4096) == b"":
                            raise ConnectionError
                    except BlockingIOError:
                        pass
            except OSError:
                for sock in socks:
                    sock.close()
                pairs.remove(entry)

    deadline = time.monotonic() + seconds
    try:
        during_at = time.monotonic() + seconds / 2
        while time.monotonic() < deadline:
            for source in sources:
                socks, outcome = pair(ctx.port, ctx.staple_port, source)
                outcomes[outcome] += 1
                if socks:
                    pairs.append((source, socks))
            keep_alive()
            per_client = Counter(source for source, _ in pairs)
            most = max(most, len(pairs))
            most_per_client = max([most_per_client, *per_client.values()])
            if "during" not in ctx.report.bystanders and time.monotonic() > during_at:
                ctx.bystander("during")
            pause(ping)
        return {"most_pairs": most, "most_pairs_per_client": most_per_client,
                "outcomes": dict(outcomes)}
    finally:
        for _, socks in pairs:
            for sock in socks:
                sock.close()


def channel_spread(ctx: Context, addresses: int = 20, joins: int = 25) -> dict[str, Any]:
    """Each of many addresses opens joins channels: the most one address got."""
    per_client: Counter = Counter()
    statuses: Counter = Counter()
    for a in range(addresses):
        source = address(25, a)
        for _ in range(joins):
            status, _ = join(ctx.port, source)
            statuses[status] += 1
            if status == 200:
                per_client[source] += 1
    ctx.bystander("during")
    return {"most_per_client": max(per_client.values(), default=0),
            "channels": sum(per_client.values()), "statuses": dict(statuses)}


def staple_redirect(ctx: Context, host: str = "evil.example:6666") -> dict[str, Any]:
    """A sender joins with a forged Host header: where are both peers told to staple?"""
    status, sender = join(ctx.port, ATTACKER, host=host)
    assert status == 200, (status, sender)
    status, recipient = join(ctx.port, BYSTANDER, "recipient", sender["channel"])
    assert status == 200, (status, recipient)
    ctx.bystander("during")
    return {"sender_staple": sender["staple"], "recipient_staple": recipient["staple"],
            "staple_port": ctx.staple_port, "forged_host": host}


def name_probes(ctx: Context, count: int = 100) -> dict[str, Any]:
    """/channel requests for names that do not exist, from one address: the statuses in
    order."""
    statuses = []
    for _ in range(count):
        name = os.urandom(8).hex()
        status, _ = post_json(ctx.port, "channel", {"channel": name,
                                                    "uuid": b64encode(os.urandom(32))},
                              ATTACKER)
        statuses.append(status)
    ctx.bystander("during")
    return {"statuses": statuses, "counts": dict(Counter(statuses))}


# -- issue 9: storage ------------------------------------------------------------------------------


def _store_as_much(mailboxes: list[Mailbox], size: int, budget: int, seconds: float,
                   refusals_to_stop: int = 30) -> tuple[Counter, int]:
    """Upload messages to random mailboxes round-robin from mailboxes, greedily: size
    bytes while they are taken, half as much after each refusal (down to 1 KiB), so that
    what is left is smaller than any message. Until budget bytes were accepted,
    refusals_to_stop refusals in a row at 1 KiB, or seconds passed. (statuses, bytes)."""
    statuses: Counter = Counter()
    stored = 0
    in_a_row = 0
    deadline = time.monotonic() + seconds
    i = 0
    while stored < budget and in_a_row < refusals_to_stop and time.monotonic() < deadline:
        status = mailboxes[i % len(mailboxes)].upload(os.urandom(32), size)
        i += 1
        statuses[status] += 1
        if status == 200:
            stored += size
            in_a_row = 0
        elif size > KIB:
            size //= 2
        else:
            in_a_row += 1
    return statuses, stored


def _bystander_stores(port: int) -> dict[str, Any]:
    """A fresh identity from the bystander address uploads a message and a small file."""
    mailbox = Mailbox(port, BYSTANDER)
    try:
        mailbox.connect()
    except AssertionError as e:  # a handshake step refused: (step, status)
        mailbox.close()
        return {"message": f"handshake {e}", "file": None, "file_answer": None}
    try:
        message = mailbox.upload(os.urandom(32), 10 * KIB)
        file_status, answer = mailbox.send_file(os.urandom(32), os.urandom(1000))
        return {"message": message, "file": file_status, "file_answer": answer}
    finally:
        mailbox.close()


def upload_flood(ctx: Context, by: str = "identity", size: int = 150 * KIB,
                 budget: int = 96 * MIB, seconds: float = 15.0, identities: int = 20
                 ) -> dict[str, Any]:
    """One identity (by="identity") or many identities from one address (by="address")
    upload big messages to random mailboxes as fast as they can; then a bystander from
    another address stores a message and a file."""
    count = 1 if by == "identity" else identities
    mailboxes = [Mailbox(ctx.port, ATTACKER).connect() for _ in range(count)]
    try:
        statuses, stored = _store_as_much(mailboxes, size, budget, seconds)
    finally:
        for mailbox in mailboxes:
            mailbox.close()
    ctx.bystander("during")
    return {"attacker": dict(statuses), "attacker_bytes": stored,
            "bystander": _bystander_stores(ctx.port)}


def fill_redis(ctx: Context, addresses: int = 16, recipients: int = 4,
               size: int = 100 * KIB, seconds: float = 20.0) -> dict[str, Any]:
    """Fill a Redis with a small maxmemory (many clients, a few real mailboxes) until it
    refuses; then a recipient downloads and deletes, and uploads work again."""
    owners = [Mailbox(ctx.port, address(26, 200 + r)).connect() for r in range(recipients)]
    senders = [Mailbox(ctx.port, address(26, a)).connect() for a in range(addresses)]
    statuses: Counter = Counter()
    try:
        deadline = time.monotonic() + seconds
        i = 0
        in_a_row = 0
        while time.monotonic() < deadline and in_a_row < 20:
            status = senders[i % addresses].upload(owners[i % recipients].hpk, size)
            i += 1
            statuses[status] += 1
            in_a_row = in_a_row + 1 if status != 200 else 0
        ctx.bystander("during")
        owner = owners[0]
        status, body = owner.command({"cmd": "download", "count": 10})
        download = status
        deletes: Counter = Counter()
        while status == 200:
            messages = owner.open(body)
            if not messages:
                break
            status, _ = owner.command({"cmd": "delete",
                                       "payload": [m["nonce"] for m in messages]})
            deletes[status] += 1
            if status != 200:
                break
            status, body = owner.command({"cmd": "download", "count": 10})
        # The relay may learn Redis's memory use by polling it: give it a few seconds.
        again = senders[0].upload(owners[1].hpk, size)
        for _ in range(12):
            if again == 200:
                break
            pause(0.25)
            again = senders[0].upload(owners[1].hpk, size)
        return {"uploads": dict(statuses), "download": download, "deletes": dict(deletes),
                "upload_after_delete": again}
    finally:
        for mailbox in owners + senders:
            mailbox.close()


def file_reservations(ctx: Context, size: int = 2**30, smallest: int = 256,
                      most: int = 80) -> dict[str, Any]:
    """Fresh identities from one address reserve files greedily (size bytes while they are
    granted, half as much after each refusal, down to smallest; at most `most` of them);
    then a bystander from another address sends a small file."""
    statuses: Counter = Counter()
    reserved = 0
    for _ in range(most):
        if size < smallest:
            break
        mailbox = Mailbox(ctx.port, ATTACKER).connect()
        try:
            status, _ = mailbox.start_file(os.urandom(32), size)
        finally:
            mailbox.close()
        statuses[status] += 1
        if status == 200:
            reserved += size
        else:
            size //= 2
    ctx.bystander("during")
    return {"reservations": dict(statuses), "reserved_bytes": reserved,
            "bystander": _bystander_stores(ctx.port)}
