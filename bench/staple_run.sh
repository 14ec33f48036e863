#!/usr/bin/env bash
# Live rendezvous benchmark: our relay (splice and copy data paths) side by side with the
# magic-wormhole transit relay, socat and a direct connection, in one session, with the
# bench kit. Results: $OUT/summary.md (and JSONL). Needs the checkout's .venv (relay, or $PY_RELAY), a transit-relay venv
# (pip install magic-wormhole-transit-relay) and socat.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KIT=${KIT:?set KIT to the loopback bench kit folder}
PY_RELAY=${PY_RELAY:-$HERE/../.venv/bin/python}
export OUT=${OUT:-${TMPDIR:-/tmp}/bench-rendezvous/$(date +%Y%m%d-%H%M%S)}
export RUNS=${RUNS:-3} SIZES=${SIZES:-"64M 1G"} PAIRS=${PAIRS:-"1000 5000 9990"}
HTTP_PORT=${HTTP_PORT:-4100}
export STAPLE_HTTP=http://127.0.0.1:$HTTP_PORT
mkdir -p "$OUT"
# 1. the baselines: transit relay, socat -b 8192 / 131072, direct, transit idle pairs
LABEL=transit-relay "$KIT/run_all.sh"
# 2. our relay, both data paths
for path in splice copy; do
  only="relay idle"; [ "$path" = copy ] && only="relay"
  PYTHONPATH=$HERE:$HERE/.. LABEL="relay-$path" HANDSHAKE=staple_handshake:Staple ONLY="$only" \
    RELAY_CMD="$PY_RELAY $HERE/staple_relay.py --data-path $path --http tcp:$HTTP_PORT:interface=127.0.0.1 --staple tcp:{PORT}:interface=127.0.0.1:backlog=1024" \
    "$KIT/run_all.sh"
done
# 3. backpressure: a receiver that never reads
PYTHONPATH=$HERE $PY_RELAY "$HERE/staple_relay.py" --http tcp:$HTTP_PORT:interface=127.0.0.1 \
  --staple tcp:4101:interface=127.0.0.1:backlog=1024 & PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
sleep 1.5
PYTHONPATH=$HERE python3 "$KIT/stall.py" --relay 127.0.0.1:4101 --handshake staple_handshake:Staple \
  --pid $PID | tee "$OUT/stall.txt"
python3 "$KIT/summarize.py" "$OUT" > "$OUT/summary.md"
echo "results in $OUT"
