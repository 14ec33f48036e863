"""The benchmarks stand alone: they name nothing outside the checkout, and the rendezvous
benchmark runs end to end (tiny sizes; only when soak runs are asked for: `-m soak`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A path of one machine: the checkout's own location, a scratch folder, a home. /opt/relay
# and /var/lib/relay are the documented deployment layout (etc/relay.service), not a machine's.
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|root|home|mnt)/[\w.-]")


def _bench_and_docs() -> list[Path]:
    files = [p for p in (ROOT / "bench").rglob("*")
             if p.suffix in {".py", ".sh", ".md", ".toml"} and ".anchors" not in p.parts
             and "results" not in p.parts]
    return files + sorted((ROOT / "docs").glob("*.md"))


def test_bench_and_docs_name_no_machine_path() -> None:
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in _bench_and_docs()
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if MACHINE_PATH.search(line)]
    assert not found, "\n".join(found)


@pytest.mark.soak
def test_rendezvous_bench_smoke(tmp_path: Path) -> None:
    # Deselected unless `-m soak` (tests/conftest.py).
    # --no-install: the anchors that are installed (bench/install_anchors.sh) take part,
    # the others are skipped; our relay and the direct connection always run.
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rendezvous_bench.py"), "--smoke", "--no-install",
         "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = tmp_path.glob("rendezvous-*")
    summary = (run / "summary.md").read_text()
    assert "relay, splice" in summary and "direct connection" in summary
    assert (run / "throughput.jsonl").read_text().count('"intact": true') >= 3
    assert "20/20" in summary  # every idle pair passed a byte each way
