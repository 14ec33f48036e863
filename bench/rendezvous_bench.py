#!/usr/bin/env python3
"""Live rendezvous benchmark: stapled throughput and idle-pair cost of our relay, next to its
anchors measured in the same run: a direct loopback connection (the ceiling), socat (a plain
TCP forwarder, default and 128 KiB buffers) and magic-wormhole's transit relay.

    .venv/bin/python bench/rendezvous_bench.py                  # 1 GiB x 3, idle 1000/5000 pairs
    .venv/bin/python bench/rendezvous_bench.py --size 64M --runs 5 --pairs 1000
    .venv/bin/python bench/rendezvous_bench.py --smoke          # tiny sizes, checks every byte

Installs the anchors first (bench/install_anchors.sh: a venv under bench/.anchors, socat from
Debian), starts every system on free loopback ports, runs the transfers round-robin (run 1 of
every system, then run 2, ...: load from elsewhere hits all of them alike), then the idle
pairs on a fresh server process per count. Prints markdown tables with the ratios against
the anchors, and writes them with one JSON line per measurement under
`<results>/rendezvous-<time>/` (default results folder: bench/results/, not committed).

Our relay is bench/staple_relay.py (the relay's rendezvous service on the memory store, the
per-client limits out of reach: every client here is 127.0.0.1); each pair is made as real
peers make it (bench/staple_handshake.py: /join x2, the three /channel writes, the staple
lines). Relay CPU is utime + stime of the server process (and its children: socat forks
one per connection) while the bytes flow, per GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.idle_pairs_client import hold_pairs, raise_fd_limit  # noqa: E402
from bench.processes import HOST, free_port, stop, wait_for_port  # noqa: E402
from bench.stall_client import stall  # noqa: E402
from bench.staple_handshake import StapleClient  # noqa: E402
from bench.stream_pairs import DirectPairs, ForwarderPairs, TransitPairs  # noqa: E402
from bench.throughput_client import measure  # noqa: E402

THROUGHPUT_SYSTEMS = ("direct", "socat", "socat-128k", "transit", "relay", "relay-copy")
IDLE_SYSTEMS = ("transit", "relay")
STALL_SYSTEMS = ("socat-128k", "transit", "relay", "relay-copy")
LABELS = {
    "direct": "direct connection (ceiling)",
    "socat": "socat (default 8 KiB buffer)",
    "socat-128k": "socat `-b 131072`",
    "transit": "magic-wormhole transit relay",
    "relay": "**relay, splice** (default data path)",
    "relay-copy": "relay, `data_path = \"copy\"`",
}
# The ratio columns: what each row is compared with.
ANCHORS = ("transit", "socat", "socat-128k", "direct")


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def size_label(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


# ---- the systems: each a running server (or none) and a way to open pairs through it ----

class System:
    def __init__(self, name: str, open_pair: Callable[[], Any], pid: int | None,
                 process: subprocess.Popen | None = None,
                 cleanup: Callable[[], None] | None = None) -> None:
        self.name, self.open_pair, self.pid = name, open_pair, pid
        self.process, self._cleanup = process, cleanup

    def close(self) -> None:
        if self.process is not None:
            stop(self.process)
        if self._cleanup is not None:
            self._cleanup()


def _spawn(cmd: list[str], log: Path, ports: list[int]) -> subprocess.Popen:
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log.open("ab"),
                               stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        for port in ports:
            wait_for_port(port, timeout=60)
    except BaseException:
        stop(process)
        raise
    if process.poll() is not None:
        raise RuntimeError(f"{cmd[0]} exited at start: see {log}")
    return process


def start_system(name: str, anchors_bin: Path | None, workdir: Path, pake: bool = True
                 ) -> System:
    log = workdir / f"{name}.log"
    if name == "direct":
        pairs = DirectPairs()
        return System(name, pairs, None, cleanup=pairs.close)
    if name in ("socat", "socat-128k"):
        target = socket.create_server((HOST, 0), backlog=1024)
        port = free_port()
        buffer = ["-b", "131072"] if name == "socat-128k" else []
        process = _spawn(["socat", *buffer, f"TCP-LISTEN:{port},bind={HOST},reuseaddr,fork",
                          f"TCP:{HOST}:{target.getsockname()[1]}"], log, [])
        # socat's listener: poll by connecting would hand the target a connection to accept.
        _wait_listening(port)
        pairs = ForwarderPairs(port, target)
        return System(name, pairs, process.pid, process, pairs.close)
    if name == "transit":
        assert anchors_bin is not None
        port = free_port()
        process = _spawn([str(anchors_bin / "twist"), "transitrelay",
                          f"--port=tcp:{port}:interface={HOST}:backlog=1024"], log, [port])
        return System(name, TransitPairs(port), process.pid, process)
    if name in ("relay", "relay-copy"):
        http, staple = free_port(), free_port()
        path = "copy" if name == "relay-copy" else "splice"
        process = _spawn([sys.executable, str(HERE / "staple_relay.py"), "--data-path", path,
                          "--http", f"tcp:{http}:interface={HOST}",
                          "--staple", f"tcp:{staple}:interface={HOST}:backlog=1024"],
                         log, [staple, http])
        client = StapleClient(f"http://{HOST}:{http}", pake=pake)
        return System(name, client.open_pair, process.pid, process)
    raise ValueError(f"unknown system {name!r}")


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    """Wait for a listener without connecting to it (from /proc/net/tcp, state 0A)."""
    deadline = time.monotonic() + timeout
    needle = f":{port:04X} 00000000:0000 0A"
    while time.monotonic() < deadline:
        if needle in Path("/proc/net/tcp").read_text():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@contextlib.contextmanager
def running(names: list[str], anchors_bin: Path | None, workdir: Path, pake: bool = True
            ) -> Iterator[dict[str, System]]:
    systems: dict[str, System] = {}
    try:
        for name in names:
            systems[name] = start_system(name, anchors_bin, workdir, pake)
        yield systems
    finally:
        for system in systems.values():
            system.close()


# ---- the blocks ----

def run_throughput(names: list[str], nbytes: int, runs: int, anchors_bin: Path | None,
                   workdir: Path, out: Path, verify: bool) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in names}
    with running(names, anchors_bin, workdir) as systems:
        time.sleep(1.0)  # let the servers finish starting before the first timed run
        for run in range(1, runs + 1):
            for name in names:
                system = systems[name]
                result = measure(system.open_pair, nbytes, system.pid, verify=verify)
                result.update(kind="throughput", system=name, run=run)
                results[name].append(result)
                _append(out / "throughput.jsonl", result)
                cpu = result["server_cpu_s_per_GiB"]
                print(f"  {name} run {run}: {result['MBps']:,.0f} MB/s"
                      + ("" if cpu is None else f", server {cpu:.2f} CPU-s/GiB")
                      + (f"  ERROR {result['error']}" if "error" in result else ""),
                      flush=True)
    return results


def run_idle(names: list[str], counts: list[int], anchors_bin: Path | None, workdir: Path,
             out: Path, check: int, pake: bool = True) -> dict[tuple[str, int], dict]:
    results = {}
    for count in counts:
        for name in names:
            # A fresh process per count.
            with running([name], anchors_bin, workdir, pake) as systems:
                system = systems[name]
                assert system.pid is not None
                result = hold_pairs(system.open_pair, count, system.pid, check=check)
            result.update(kind="idle", system=name)
            results[name, count] = result
            _append(out / "idle.jsonl", result)
            print(f"  {name} {count} pairs: {result['established']} established, "
                  f"{result.get('rss_kib_per_pair', float('nan')):.2f} KiB/pair, "
                  f"{result.get('fds_per_pair', float('nan')):.2f} fds/pair"
                  + (f"  ERROR {result['error']}" if result["error"] else ""), flush=True)
    return results


def run_stall(names: list[str], anchors_bin: Path | None, workdir: Path, out: Path
              ) -> dict[str, dict]:
    results = {}
    for name in names:
        with running([name], anchors_bin, workdir) as systems:  # a fresh process each
            system = systems[name]
            result = stall(system.open_pair, system.pid)
        result.update(kind="stall", system=name)
        results[name] = result
        _append(out / "stall.jsonl", result)
        print(f"  {name}: {result['accepted_bytes'] / 2**20:.1f} MiB accepted, server RSS "
              f"{result['server_rss_growth_kib']:+,} KiB", flush=True)
    return results


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


# ---- tables ----

def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _round_ratio(a: list[dict], b: list[dict]) -> float | None:
    """Median over the rounds of a's MB/s over b's in the same round: the two ran seconds
    apart, so load from elsewhere mostly cancels out."""
    return _median([x["MBps"] / y["MBps"] for x, y in zip(a, b, strict=False) if y["MBps"]])


def throughput_table(results: dict[str, list[dict]], nbytes: int) -> str:
    anchors = [a for a in ANCHORS if a in results]
    transit_cpu = (_median([r["server_cpu_s_per_GiB"] for r in results["transit"]])
                   if "transit" in results else None)
    head = (f"| {size_label(nbytes)}, runs: {max(len(r) for r in results.values())} | MB/s "
            "median (min-max) | server CPU-s per GiB | CPU ÷ transit's | "
            + " | ".join(f"MB/s ÷ {a}" for a in anchors) + " |")
    lines = [head, "|" + "---|" * (4 + len(anchors))]
    for name, runs in results.items():
        speeds = [r["MBps"] for r in runs]
        cpu = _median([r["server_cpu_s_per_GiB"] for r in runs])
        cpu_ratio = f"{cpu / transit_cpu:.2f}" if cpu and transit_cpu else "–"
        ratios = [_round_ratio(runs, results[a]) for a in anchors]
        lines.append(f"| {LABELS[name]} | {_median(speeds):,.0f} ({min(speeds):,.0f}-"
                     f"{max(speeds):,.0f}) | {'–' if cpu is None else f'{cpu:.2f}'} | "
                     f"{cpu_ratio} | "
                     + " | ".join("–" if r is None else f"{r:.2f}" for r in ratios) + " |")
    lines += ["", "MB/s ÷ X: the median over the rounds of this system's MB/s over X's in the "
              "same round."]
    return "\n".join(lines)


def stall_table(results: dict[str, dict]) -> str:
    lines = ["| receiver never reads | sender got rid of (MiB) | then | server RSS before -> "
             "after (KiB) |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {LABELS[name]} | {r['accepted_bytes'] / 2**20:,.1f} | "
                     f"{'stalled' if r['stalled'] else 'never stalled'} | "
                     f"{r['server_rss_kib_before']:,} -> {r['server_rss_kib_after']:,} "
                     f"({r['server_rss_growth_kib']:+,}) |")
    return "\n".join(lines)


def idle_table(results: dict[tuple[str, int], dict]) -> str:
    lines = ["| server | pairs held | KiB RSS per pair | fds per pair | server CPU ms per "
             "pair set up | pairs set up per s | sample connected |", "|---|---|---|---|---|---|---|"]
    for (name, count), r in results.items():
        held = f"{r['established']:,}" + ("" if r["established"] == count else f" of {count:,}")
        lines.append(
            f"| {LABELS[name]} | {held} | {r.get('rss_kib_per_pair', 0):.2f} | "
            f"{r.get('fds_per_pair', 0):.2f} | {r.get('server_cpu_ms_per_pair', 0):.2f} | "
            f"{r['pairs_per_second'] or 0:,.0f} | {r['connected']}/{r['checked']} |")
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def anchor_versions(anchors_bin: Path | None) -> dict[str, str]:
    versions = {}
    if anchors_bin is not None:
        done = subprocess.run(
            [str(anchors_bin / "python"), "-c", "from importlib.metadata import version; "
             "print(version('magic-wormhole-transit-relay'))"], capture_output=True, text=True)
        versions["transit relay"] = done.stdout.strip() or "?"
    if shutil.which("socat"):
        done = subprocess.run(["socat", "-V"], capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if "version" in x), "")
        versions["socat"] = line.split("version", 1)[-1].split()[0] if line else "?"
    return versions


# ---- the entry point ----

def summarize(folder: Path) -> str:
    """The tables again, from a results folder's JSON lines (e.g. after changing them)."""
    throughput: dict[str, list[dict]] = {}
    idle: dict[tuple[str, int], dict] = {}
    stalled: dict[str, dict] = {}
    nbytes = 0
    for path, kind in ((folder / "throughput.jsonl", "throughput"),
                       (folder / "idle.jsonl", "idle"), (folder / "stall.jsonl", "stall")):
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if kind == "throughput":
                throughput.setdefault(record["system"], []).append(record)
                nbytes = record["bytes"]
            elif kind == "idle":
                idle[record["system"], record["requested"]] = record
            else:
                stalled[record["system"]] = record
    parts = []
    if throughput:
        parts.append(throughput_table(throughput, nbytes))
    if idle:
        parts.append(idle_table(idle))
    if stalled:
        parts.append(stall_table(stalled))
    return "\n\n".join(parts) + "\n"


def install_anchors() -> Path:
    """Runs bench/install_anchors.sh; the anchors venv's bin folder (its last line)."""
    done = subprocess.run(["bash", str(HERE / "install_anchors.sh")], stdout=subprocess.PIPE,
                          text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G", help="bytes per transfer (1G, 64M, ...)")
    parser.add_argument("--runs", type=int, default=3, help="transfers per system")
    parser.add_argument("--pairs", type=int, nargs="*", default=[1000, 5000],
                        help="idle pair counts (each on a fresh server; none: skip)")
    parser.add_argument("--systems", nargs="+", default=list(THROUGHPUT_SYSTEMS),
                        choices=THROUGHPUT_SYSTEMS, help="throughput rows")
    parser.add_argument("--idle-systems", nargs="*", default=list(IDLE_SYSTEMS),
                        choices=IDLE_SYSTEMS)
    parser.add_argument("--stall-systems", nargs="*", default=list(STALL_SYSTEMS),
                        choices=STALL_SYSTEMS, help="backpressure check (none: skip)")
    parser.add_argument("--check", type=int, default=100,
                        help="idle pairs checked for a byte each way (0: all)")
    parser.add_argument("--join-only", action="store_true",
                        help="idle relay pairs without the /channel writes (earlier method)")
    parser.add_argument("--verify", action="store_true", help="CRC-32 every byte, both ends")
    parser.add_argument("--results", type=Path, default=HERE / "results",
                        help="results folder (default bench/results)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not run install_anchors.sh; skip anchors that are missing")
    parser.add_argument("--summarize", type=Path, metavar="DIR",
                        help="only print the tables of an earlier run's results folder")
    parser.add_argument("--smoke", action="store_true",
                        help="end to end with tiny sizes (4 MiB x1, 20 idle pairs, verified)")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if args.smoke:
        args.size, args.runs, args.pairs, args.check, args.verify = "4M", 1, [20], 0, True
    nbytes = parse_size(args.size)

    anchors_bin: Path | None = None
    if args.no_install:
        candidate = HERE / ".anchors" / "venv" / "bin"
        anchors_bin = candidate if (candidate / "twist").exists() else None
    else:
        anchors_bin = install_anchors()
    skipped = []
    for name in list(args.systems) + list(args.idle_systems) + list(args.stall_systems):
        missing = ((name == "transit" and anchors_bin is None)
                   or (name.startswith("socat") and shutil.which("socat") is None))
        if missing:
            skipped.append(name)
    systems = [s for s in args.systems if s not in skipped]
    idle_systems = [s for s in args.idle_systems if s not in skipped]
    stall_systems = [s for s in args.stall_systems if s not in skipped]

    raise_fd_limit()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.results / f"rendezvous-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    versions = anchor_versions(anchors_bin)
    header = (f"Rendezvous benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, commit "
              f"{_git_commit()}, {os.cpu_count()} CPUs, load average "
              f"{load_before[0]:.1f} at the start; "
              + ", ".join(f"{name} {version}" for name, version in versions.items()))
    _append(out / "meta.jsonl", {"kind": "meta", "started": stamp, "commit": _git_commit(),
                                 "cpus": os.cpu_count(), "loadavg": load_before,
                                 "versions": versions,
                                 "args": {k: str(v) for k, v in vars(args).items()},
                                 "skipped": skipped})
    print(header + (f"; skipped (not installed): {', '.join(sorted(set(skipped)))}"
                    if skipped else ""), flush=True)

    sections = [header, ""]
    failures = []
    if systems and args.runs > 0:
        print(f"throughput, {size_label(nbytes)} x {args.runs}:", flush=True)
        throughput = run_throughput(systems, nbytes, args.runs, anchors_bin, out, out,
                                    args.verify)
        sections += [throughput_table(throughput, nbytes), ""]
        failures += [f"{r['system']} run {r['run']}: {r['error']}"
                     for runs in throughput.values() for r in runs if "error" in r]
        failures += [f"{r['system']} run {r['run']}: bytes changed"
                     for runs in throughput.values() for r in runs if r.get("intact") is False]
    if idle_systems and args.pairs:
        print(f"idle pairs, {', '.join(map(str, args.pairs))}:", flush=True)
        idle = run_idle(idle_systems, args.pairs, anchors_bin, out, out, args.check,
                        pake=not args.join_only)
        sections += [idle_table(idle), ""]
        failures += [f"{name} {count} pairs: {r['error'] or 'a sampled pair not connected'}"
                     for (name, count), r in idle.items()
                     if r["error"] or r["connected"] != r["checked"]]
    if stall_systems:
        print("backpressure:", flush=True)
        stalled = run_stall(stall_systems, anchors_bin, out, out)
        sections += [stall_table(stalled), ""]
        failures += [f"{name}: no backpressure" for name, r in stalled.items()
                     if not r["stalled"]]
    load_after = os.getloadavg()
    sections.append(f"Load average {load_after[0]:.1f} at the end. Server CPU: utime + stime "
                    "of the server process and its children while the bytes flowed.")
    summary = "\n".join(sections) + "\n"
    (out / "summary.md").write_text(summary)
    print("\n" + summary + f"\nresults in {out}", flush=True)
    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
