#!/usr/bin/env bash
# Install a headless browser for the report test (tests/bench/test_report.py), from
# Debian's package `chromium` (binary /usr/bin/chromium). Idempotent: exits at once when
# `chromium` is already on PATH.
#
#   as root:     apt-get install --no-install-recommends chromium (apt-get update first if
#                apt has no candidate, or if the first install fails)
#   as a user:   prints that the browser test will be skipped and exits 0; the browser is
#                needed only by that one test, never by bastion itself.
set -euo pipefail

PKG=chromium

say() { echo "get_chromium: $*"; }

if command -v chromium >/dev/null 2>&1; then
    say "chromium already installed at $(command -v chromium)"
    exit 0
fi

if [[ "${EUID:-$(id -u)}" -ne 0 ]]; then
    say "not root, so chromium is not installed; the headless-browser report test" \
        "(tests/bench/test_report.py) will be skipped. To run it: sudo apt-get install $PKG"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "apt-get not found (not a Debian-like system); the headless-browser report test" \
        "will be skipped. Install a chromium binary named 'chromium' on PATH to run it."
    exit 0
fi

has_candidate() {  # true when apt knows a version of the package to install
    local candidate
    candidate="$(apt-cache policy "$PKG" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [[ -n "$candidate" && "$candidate" != "(none)" ]]
}

install() {
    say "apt-get install -y -q --no-install-recommends $PKG"
    apt-get install -y -q --no-install-recommends "$PKG"
}

export DEBIAN_FRONTEND=noninteractive
if has_candidate; then
    if install; then
        say "installed $(command -v chromium || echo "$PKG")"
        exit 0
    fi
    say "install failed; refreshing the package lists and trying again"
else
    say "apt has no candidate for $PKG; refreshing the package lists (apt-get update)"
fi
apt-get update -q
install
say "installed $(command -v chromium || echo "$PKG")"
