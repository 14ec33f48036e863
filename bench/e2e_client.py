#!/usr/bin/env python3
"""End-to-end client benchmark: `relay send` -> `relay receive` of a big file through a local
relay, next to the same relay's raw stapled throughput (the bench kit), in one run.

    .venv/bin/python bench/e2e_client.py [--size 1G] [--runs 3] [--out DIR]

One `twistd relay` (memory store, splice data path) on free loopback ports serves both parts:
1. the kit's throughput.py through the staple handshake plug-in (bench/staple_handshake.py):
   bytes through the relay with no crypto, no disk: the ceiling;
2. the `relay` command: the sender reads and hashes the file in worker threads and seals
   1 MiB AES-256-GCM records; the receiver opens them, hashes and writes in worker threads,
   fsyncs, and renames the file into place.
For each client run: MB/s (10^6 bytes per second over the receiver's whole run: process
start, PAKE, transfer, fsync), CPU seconds and peak RSS of each end (wait4), and the relay's
CPU. Prints a markdown table and appends JSON lines to OUT/e2e.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The loopback bench kit (transit relay and socat runners); its folder is given by $KIT.
KIT = Path(os.environ.get("KIT", "bench-kit"))
CODE_LINE = re.compile(r"Code phrase: (\S+)")
UNITS = {"k": 2**10, "m": 2**20, "g": 2**30}


def parse_size(text: str) -> int:
    text = text.strip().lower()
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_file(path: Path, size: int) -> str:
    """size incompressible bytes (a fresh SHA-256 head per MiB); their SHA-256."""
    block = os.urandom(2**20)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        written, counter = 0, 0
        while written < size:
            head = hashlib.sha256(counter.to_bytes(8, "big")).digest()
            piece = (head + block[32:])[:size - written]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
            counter += 1
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**20):
            digest.update(block)
    return digest.hexdigest()


class Relay:
    def __init__(self, workdir: Path) -> None:
        self.http, self.staple = free_port(), free_port()
        self.log = workdir / "relay.log"
        self.process = subprocess.Popen(
            [venv_tool("twistd"), "-n", "--pidfile=", "--logfile", str(self.log), "relay",
             "--port", f"tcp:{self.http}:interface=127.0.0.1",
             "--staple", f"tcp:{self.staple}:interface=127.0.0.1",
             "--files-dir", str(workdir / "files")],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.http), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the relay did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)


def run_kit(relay: Relay, size: str, runs: int, out: Path) -> dict:
    """The bench kit's stapled throughput through this relay (no client crypto, no disk)."""
    env = dict(os.environ, PYTHONPATH=str(HERE), STAPLE_HTTP=relay.url)
    jsonl = out / "kit.jsonl"
    subprocess.run([sys.executable, str(KIT / "throughput.py"), "--relay",
                    f"127.0.0.1:{relay.staple}", "--pid", str(relay.process.pid),
                    "--bytes", size, "--runs", str(runs), "--handshake",
                    "staple_handshake:Staple", "--label", "relay-stapled", "--json",
                    str(jsonl)], env=env, check=True, timeout=600)
    return json.loads(jsonl.read_text().splitlines()[-1])


def wait4(process: subprocess.Popen, timeout: float) -> tuple[int, float, int]:
    """(exit code, CPU seconds, peak RSS bytes) of a child, reaped with its own rusage."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024
        time.sleep(0.01)
    process.kill()
    raise RuntimeError("a client did not finish in time")


def run_client(relay: Relay, source: Path, expected: str, workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_URL=relay.url, RELAY_HOME=str(workdir / "home"))
    out_dir = workdir / "received"
    shutil.rmtree(out_dir, ignore_errors=True)
    err = workdir / "send.err"
    with open(err, "wb") as err_f:
        sender = subprocess.Popen([venv_tool("relay"), "send", str(source)], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err_f)
    deadline = time.monotonic() + 30
    while not (match := CODE_LINE.search(err.read_text(errors="replace"))):
        if time.monotonic() > deadline or sender.poll() is not None:
            raise RuntimeError(f"no code from relay send: {err.read_text()}")
        time.sleep(0.01)
    relay_cpu = cpu_seconds(relay.process.pid)
    started = time.monotonic()
    receiver = subprocess.Popen(
        [venv_tool("relay"), "receive", "--no-mailbox", "-o", str(out_dir)],
        env=dict(env, RELAY_CODE=match.group(1)), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    code_r, cpu_r, rss_r = wait4(receiver, 900)
    elapsed = time.monotonic() - started
    code_s, cpu_s, rss_s = wait4(sender, 60)
    relay_cpu = cpu_seconds(relay.process.pid) - relay_cpu
    if code_r or code_s:
        raise RuntimeError(f"exit codes {code_s}/{code_r}: {receiver.stderr.read()!r}")
    if sha256_of(out_dir / source.name) != expected:
        raise RuntimeError("the received file differs")
    size = source.stat().st_size
    return {"bytes": size, "seconds": round(elapsed, 3),
            "mb_per_s": round(size / elapsed / 1e6, 1),
            "sender_cpu_s": round(cpu_s, 2), "receiver_cpu_s": round(cpu_r, 2),
            "sender_peak_rss_mb": round(rss_s / 1e6, 1),
            "receiver_peak_rss_mb": round(rss_r / 1e6, 1),
            "relay_cpu_s": round(relay_cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / f"bench-e2e-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="relay-e2e-bench-") as temp:
        workdir = Path(temp)
        source = workdir / "big.bin"
        expected = write_file(source, size)
        relay = Relay(workdir)
        try:
            kit = run_kit(relay, args.size, args.runs, args.out)
            results = []
            for number in range(args.runs):
                result = run_client(relay, source, expected, workdir)
                results.append(result)
                print(f"run {number + 1}: {result}", flush=True)
        finally:
            relay.stop()
    with open(args.out / "e2e.jsonl", "a") as f:
        for result in results:
            f.write(json.dumps({"kind": "relay-send-receive", **result}) + "\n")
        f.write(json.dumps({"kind": "kit-stapled", **kit}) + "\n")

    def median(key: str) -> float:
        return statistics.median(r[key] for r in results)

    print(f"\nresults in {args.out}\n")
    print(f"| {args.size} through one local relay (median of {args.runs}) | MB/s | "
          f"sender CPU s | receiver CPU s | sender peak RSS MB | receiver peak RSS MB | "
          f"relay CPU s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| `relay send` -> `relay receive` | {median('mb_per_s'):.1f} | "
          f"{median('sender_cpu_s'):.2f} | {median('receiver_cpu_s'):.2f} | "
          f"{median('sender_peak_rss_mb'):.1f} | {median('receiver_peak_rss_mb'):.1f} | "
          f"{median('relay_cpu_s'):.2f} |")
    print(f"| kit throughput.py, stapled, same relay | {kit_mbps(kit)} | – | – | – | – | "
          f"{kit_relay_cpu(kit)} |")


def kit_mbps(kit: dict) -> str:
    return f"{kit['median_MBps']:.1f}"


def kit_relay_cpu(kit: dict) -> str:
    cpu = kit.get("median_server_cpu_s")
    return "n/a" if cpu is None else f"{cpu:.2f}"


if __name__ == "__main__":
    main()
