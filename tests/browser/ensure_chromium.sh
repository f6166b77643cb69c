#!/bin/sh
# Installs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver) when missing.
# Called by the browser test's session fixture, so `make test` on a fresh CI machine (root) sets them up.
# Exit status != 0 when they can't be installed: the browser test then fails with this script's output.
set -eu

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure_chromium: /usr/bin/chromium or /usr/bin/chromedriver is missing and this user can't install" \
             "packages (not root, no password-less sudo); run: apt-get install chromium chromium-driver" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: no apt-get on this machine; install chromium and chromedriver at /usr/bin" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "ensure_chromium: installing chromium and chromium-driver with apt-get" >&2
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium chromium-driver

for binary in /usr/bin/chromium /usr/bin/chromedriver; do
    if [ ! -x "$binary" ]; then
        echo "ensure_chromium: $binary still missing after apt-get install" >&2
        exit 1
    fi
done
