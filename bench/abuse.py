"""The attacks of issues 8 and 9 against real relays, measured: per attack, the relay's RSS
growth, open fds, CPU and a bystander's latency before, during and after.

    python bench/abuse.py [--store memory|redis|both] [--quick] [--only NAME] [--lenient]

Starts its own `twistd relay` (and redis-server) per attack on loopback, with the settings
of tests/abuse/settings.py; the attack clients are tests/abuse/attacks.py, the same code the
tests run. --quick uses smaller counts; --lenient drops settings the relay does not know
(to measure a relay without some of the limits). Nothing is written into the checkout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.abuse import attacks  # noqa: E402
from tests.abuse.relays import LENIENT_ENV, SettingUnknown, redis, target  # noqa: E402
from tests.abuse.settings import REDIS_MAXMEMORY  # noqa: E402

MIB = 1024 * 1024
BOTH = ("memory", "redis")


class Scenario:
    def __init__(self, name: str, profile: str, attack: Callable[..., dict[str, Any]],
                 full: dict[str, Any], quick: dict[str, Any] | None = None,
                 stores: tuple[str, ...] = BOTH, redis_maxmemory: bool = False,
                 rendezvous: bool = True, fact: str = "", fd_limit: int | None = None
                 ) -> None:
        self.name = name
        self.profile = profile
        self.attack = attack
        self.full = full
        self.quick = quick if quick is not None else full
        self.stores = stores
        self.redis_maxmemory = redis_maxmemory
        self.rendezvous = rendezvous
        self.fact = fact  # the fact worth a column of its own
        self.fd_limit = fd_limit


SCENARIOS = [
    Scenario("pipelined getEntropy", "pipelining", attacks.pipelined_entropy,
             {"count": 1000}, {"count": 300}, fact="sent_bytes"),
    Scenario("pipelined downloads", "pipelining", attacks.pipelined_downloads,
             {"count": 20}, {"count": 10, "messages": 40}, fact="mailbox_bytes"),
    Scenario("slow headers", "base", attacks.slow_headers, {"count": 200, "seconds": 8.0},
             stores=("memory",), fact="open_at_end"),
    Scenario("slow bodies", "base", attacks.slow_bodies, {"count": 300, "seconds": 11.0},
             {"count": 100, "seconds": 8.0}, stores=("memory",), fact="open_at_end"),
    Scenario("fd flood (limit 1024)", "flood", attacks.connection_flood, {"count": 1200},
             stores=("memory",), fact="limit_log_lines", fd_limit=1024),
    Scenario("connections per client", "per_client_connections",
             attacks.per_client_connections, {"count": 300}, stores=("memory",),
             fact="held"),
    Scenario("long-poll flood", "long_polls", attacks.long_poll_flood, {"count": 5000},
             {"count": 1000}, fact="held"),
    Scenario("idle waiters", "idle_waiters", attacks.idle_waiters,
             {"addresses": 20, "channels_per_address": 50},
             {"addresses": 10, "channels_per_address": 25, "seconds": 3.0},
             fact="cpu_share"),
    Scenario("stuck pairs", "pairs", attacks.stuck_pairs, {"addresses": 8, "seconds": 5.0},
             rendezvous=False, fact="most_pairs"),
    Scenario("channel spread", "channels", attacks.channel_spread,
             {"addresses": 20, "joins": 25}, fact="most_per_client"),
    Scenario("staple redirect", "base", attacks.staple_redirect, {}, stores=("memory",),
             fact="recipient_staple"),
    Scenario("name probes", "probes", attacks.name_probes, {"count": 100}, fact="counts"),
    Scenario("upload flood, one identity", "storage", attacks.upload_flood,
             {"by": "identity"}, redis_maxmemory=True, fact="bystander"),
    Scenario("upload flood, one address", "storage", attacks.upload_flood,
             {"by": "address"}, redis_maxmemory=True, fact="bystander"),
    Scenario("Redis maxmemory", "redis_full", attacks.fill_redis, {}, stores=("redis",),
             redis_maxmemory=True, fact="upload_after_delete"),
    Scenario("file reservations", "reservations", attacks.file_reservations, {},
             redis_maxmemory=True, fact="bystander"),
]


def run_scenario(scenario: Scenario, store: str, quick: bool) -> attacks.Report:
    workdir = Path(tempfile.mkdtemp(prefix="relay-abuse-"))
    try:
        server_context = (redis(maxmemory=REDIS_MAXMEMORY, policy="noeviction")
                          if store == "redis" and scenario.redis_maxmemory else None)
        if server_context is None:
            with target(workdir, scenario.profile, store, fd_limit=scenario.fd_limit) as relay:
                return attacks.run(relay, scenario.attack, rendezvous=scenario.rendezvous,
                                   **(scenario.quick if quick else scenario.full))
        with server_context as server, target(workdir, scenario.profile, store,
                                              redis_server=server,
                                              fd_limit=scenario.fd_limit) as relay:
            return attacks.run(relay, scenario.attack, rendezvous=scenario.rendezvous,
                               **(scenario.quick if quick else scenario.full))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def latency(report: attacks.Report, when: str) -> str:
    result = report.bystanders.get(when)
    if result is None:
        return "-"
    return f"{result.seconds:.2f}s" if result.ok else f"FAIL {result.seconds:.1f}s"


def brief(value: Any, width: int = 34) -> str:
    if isinstance(value, dict):
        text = " ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, dict))
    else:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["memory", "redis", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--only", help="run the attacks whose name contains this")
    parser.add_argument("--lenient", action="store_true",
                        help="drop settings the relay does not know instead of stopping")
    options = parser.parse_args()
    if options.lenient:
        os.environ[LENIENT_ENV] = "1"
    stores = BOTH if options.store == "both" else (options.store,)
    header = (f"{'attack':28} {'store':6} {'RSS +MiB':>8} {'fds':>11} {'CPU':>5} "
              f"{'before':>7} {'during':>10} {'after':>7}  fact")
    print(header)
    print("-" * len(header))
    failures = 0
    for scenario in SCENARIOS:
        if options.only and options.only.lower() not in scenario.name.lower():
            continue
        for store in stores:
            if store not in scenario.stores:
                continue
            started = time.monotonic()
            try:
                report = run_scenario(scenario, store, options.quick)
            except SettingUnknown as e:
                print(f"{scenario.name:28} {store:6} {e}")
                return 2
            except Exception as e:  # one broken attack does not hide the others' numbers
                failures += 1
                print(f"{scenario.name:28} {store:6} error: {type(e).__name__}: {e}"[:200])
                continue
            fact = report.facts.get(scenario.fact, "")
            print(f"{scenario.name:28} {store:6} {report.rss_growth / MIB:8.1f} "
                  f"{report.fds_before:>5}->{report.fds_peak:<5} {report.cpu_share:5.0%} "
                  f"{latency(report, 'before'):>7} {latency(report, 'during'):>10} "
                  f"{latency(report, 'after'):>7}  {scenario.fact}={brief(fact)} "
                  f"({time.monotonic() - started:.0f}s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
