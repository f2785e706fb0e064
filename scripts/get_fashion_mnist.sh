#!/usr/bin/env bash
# Make the Fashion-MNIST IDX files available to bastion, from Debian's package
# dataset-fashion-mnist. Idempotent: exits at once when the files are already there.
#
#   as root:     apt-get install dataset-fashion-mnist  -> /usr/share/datasets/fashion-mnist
#   as a user:   apt-get download + dpkg -x             -> <repo>/.cache/bastion/data/fashion-mnist/
#                                                          usr/share/datasets/fashion-mnist
# bastion.data.load_dataset("fashion-mnist", ...) looks in both places.
set -euo pipefail

PKG=dataset-fashion-mnist
DEBIAN_DIR=/usr/share/datasets/fashion-mnist
SUBDIR=usr/share/datasets/fashion-mnist
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="$REPO_ROOT/.cache/bastion/data/fashion-mnist"
USER_CACHE_ROOT="${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/bastion/data/fashion-mnist"
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

say() { echo "get_fashion_mnist: $*"; }

have_all() {  # have_all DIR: true when DIR holds the four non-empty files
    local f
    for f in "${FILES[@]}"; do
        [[ -s "$1/$f" ]] || return 1
    done
}

found_somewhere() {
    local d
    for d in "$DEBIAN_DIR" "$CACHE_ROOT/$SUBDIR" "$USER_CACHE_ROOT/$SUBDIR"; do
        if have_all "$d"; then
            say "Fashion-MNIST already present in $d"
            return 0
        fi
    done
    return 1
}

has_candidate() {  # true when apt knows a version of the package to install
    local candidate
    candidate="$(apt-cache policy "$PKG" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [[ -n "$candidate" && "$candidate" != "(none)" ]]
}

install_as_root() {
    export DEBIAN_FRONTEND=noninteractive
    if has_candidate; then
        say "apt-get install -y -q $PKG"
        if apt-get install -y -q "$PKG"; then
            return 0
        fi
        say "install failed; refreshing the package lists and trying again"
    else
        say "apt has no candidate for $PKG; refreshing the package lists (apt-get update)"
    fi
    apt-get update -q || return 1
    say "apt-get install -y -q $PKG"
    apt-get install -y -q "$PKG"
}

TMP_DIR=""
cleanup() {
    if [[ -n "$TMP_DIR" ]]; then rm -rf "$TMP_DIR"; fi
}
trap cleanup EXIT

extract_as_user() {  # apt-get download the .deb and unpack it with dpkg -x (no root needed)
    local deb
    TMP_DIR="$(mktemp -d)" || return 1
    say "apt-get download $PKG (into $TMP_DIR)"
    (cd "$TMP_DIR" && apt-get download -q "$PKG") || return 1
    deb="$(find "$TMP_DIR" -maxdepth 1 -name "${PKG}_*.deb" | head -n 1)"
    [[ -n "$deb" ]] || return 1
    mkdir -p "$CACHE_ROOT" || return 1
    say "dpkg -x ${deb##*/} $CACHE_ROOT"
    dpkg -x "$deb" "$CACHE_ROOT" || return 1
}

if found_somewhere; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    echo "get_fashion_mnist: apt-get/dpkg not found (not a Debian-like system)." >&2
    echo "  Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz" >&2
    echo "  and t10k-labels-idx1-ubyte.gz in a folder and pass --data-dir or set BASTION_DATA." >&2
    exit 1
fi

if [[ "$(id -u)" -eq 0 ]]; then
    if install_as_root && have_all "$DEBIAN_DIR"; then
        say "installed into $DEBIAN_DIR"
        exit 0
    fi
    say "apt-get install did not provide the files; trying apt-get download + dpkg -x"
fi

if extract_as_user && have_all "$CACHE_ROOT/$SUBDIR"; then
    say "unpacked into $CACHE_ROOT/$SUBDIR"
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    TRIED="apt-get install $PKG, then apt-get download $PKG + dpkg -x"
else
    TRIED="apt-get download $PKG + dpkg -x (not root, so no apt-get install)"
fi
cat >&2 <<EOF
get_fashion_mnist: could not get Fashion-MNIST.
  Tried: $TRIED.
  If apt has no candidate for $PKG, a root user must run 'apt-get update' first
  (or simply: sudo apt-get install $PKG).
  Otherwise put the four IDX files (${FILES[*]})
  in a folder and pass --data-dir or set BASTION_DATA.
EOF
exit 1
