#!/usr/bin/env bash
# The board's browser tests (tests/browser) drive the distribution's Chromium and never
# download a browser. `make test` runs this first: it installs chromium and chromium-driver
# with apt when they are missing and we are root (as in CI); otherwise it says what to run.
# With CI=true a missing browser is an error; elsewhere the browser tests skip with the reason.
set -euo pipefail
CHROMIUM="${TIERLINE_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing chromium and chromium-driver for the browser tests (apt-get)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium chromium-driver >/dev/null
    exit 0
fi
echo "The board's browser tests need Chromium at $CHROMIUM. Install it with:" >&2
echo "    sudo apt-get install -y chromium chromium-driver" >&2
echo "(or point TIERLINE_CHROMIUM at a Chromium binary)." >&2
if [ "${CI:-}" = "true" ]; then
    exit 1
fi
echo "Continuing: the browser tests will skip." >&2
