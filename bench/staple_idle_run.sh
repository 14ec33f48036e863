#!/usr/bin/env bash
# Idle pairs and 1 GiB throughput in one session: the transit relay, socat, our relay as
# committed at BEFORE (default HEAD, for before/after comparisons) and our relay in this tree.
# Results: $OUT/summary.md (one directory per relay under $OUT). Needs the checkout's .venv (relay, or $PY_RELAY),
# a transit-relay venv (pip install magic-wormhole-transit-relay) and socat. PAIRS up to about
# 9,990 with the sandbox's RLIMIT_NOFILE of 20,000 (2 sockets per pair on each side).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:?set KIT to the loopback bench kit folder}
PY_RELAY=${PY_RELAY:-$HERE/../.venv/bin/python}
export OUT=${OUT:-${TMPDIR:-/tmp}/bench-rendezvous/idle-$(date +%Y%m%d-%H%M%S)}
RUNS=${RUNS:-5} PAIRS=${PAIRS:-"1000 5000 9990"} BEFORE_PAIRS=${BEFORE_PAIRS:-"1000 5000"}
BEFORE=${BEFORE:-HEAD}
HTTP_PORT=${HTTP_PORT:-4100}
export STAPLE_HTTP=http://127.0.0.1:$HTTP_PORT
mkdir -p "$OUT"
relay_cmd() {  # $1: directory holding bench/staple_relay.py
  echo "$PY_RELAY $1/bench/staple_relay.py --data-path splice --http tcp:$HTTP_PORT:interface=127.0.0.1 --staple tcp:{PORT}:interface=127.0.0.1:backlog=1024"
}
# 1. baselines
OUT=$OUT/transit SIZES=1G RUNS=3 PAIRS="$PAIRS" LABEL=transit-relay ONLY="relay idle" "$KIT/run_all.sh"
OUT=$OUT/socat SIZES=1G RUNS=$RUNS ONLY=socat "$KIT/run_all.sh"
# 2. our relay before (the committed tree; the same keep-alive handshake plug-in)
if [ -n "$BEFORE" ]; then
  old=$(mktemp -d)
  trap 'rm -rf "$old"' EXIT
  git -C "$HERE/.." archive "$BEFORE" relay bench | tar -x -C "$old"
  OUT=$OUT/before PYTHONPATH=$HERE:$old SIZES=1G RUNS=$RUNS PAIRS="$BEFORE_PAIRS" LABEL=relay-before \
    HANDSHAKE=staple_handshake:Staple ONLY="relay idle" RELAY_CMD="$(relay_cmd "$old")" \
    "$KIT/run_all.sh"
fi
# 3. our relay now
OUT=$OUT/now PYTHONPATH=$HERE:$HERE/.. SIZES=1G RUNS=$RUNS PAIRS="$PAIRS" LABEL=relay-splice \
  HANDSHAKE=staple_handshake:Staple ONLY="relay idle" RELAY_CMD="$(relay_cmd "$HERE/..")" \
  "$KIT/run_all.sh"
for part in transit socat before now; do
  [ -d "$OUT/$part" ] && { echo "## $part"; python3 "$KIT/summarize.py" "$OUT/$part"; }
done > "$OUT/summary.md"
echo "results in $OUT"
