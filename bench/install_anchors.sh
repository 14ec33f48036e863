#!/usr/bin/env bash
# Installs what the benchmarks compare the relay with, from the package registries only:
#   - magic-wormhole, its transit relay and its mailbox server (PyPI), in their own venv
#     (bench/.anchors/venv, or $ANCHORS_VENV), so their pins never touch the relay's venv;
#   - socat (Debian), when it is missing and we run as root.
# Idempotent: a second run only checks. Prints the venv's bin folder on its last line.
#     bash bench/install_anchors.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${ANCHORS_VENV:-$HERE/.anchors/venv}
PACKAGES=(magic-wormhole magic-wormhole-transit-relay magic-wormhole-mailbox-server)

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import wormhole, wormhole_transit_relay, wormhole_mailbox_server' \
        2>/dev/null; then
    "$VENV/bin/pip" install -q "${PACKAGES[@]}" >&2
fi

if ! command -v socat >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        (apt-get install -y -q socat || { apt-get update -q && apt-get install -y -q socat; }) >&2
    else
        echo "socat is missing: install it (Debian: apt-get install socat)" >&2
    fi
fi
echo "$VENV/bin"
