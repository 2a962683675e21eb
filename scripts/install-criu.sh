#!/usr/bin/env bash
# Build CRIU 4.x from Debian trixie's source package and install the binary
# as /usr/local/sbin/criu (nothing else is installed system-wide).
#
# Why: Debian 12's criu 3.17 fails on current kernels ("vdso: Unexpected rt
# vDSO area bounds"); 4.x works. The trixie source is fetched through a
# private apt configuration (its own sources list, lists and cache under a
# temporary directory), so trixie never appears in the host's apt sources.
# Build dependencies are installed from the host's own (bookworm) archive.
#
# Idempotent: does nothing when /usr/local/sbin/criu already reports 4.x.
# Needs root and network access to Debian's mirrors only.
#
# Usage: scripts/install-criu.sh
set -euo pipefail

log() { printf 'install-criu: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'die "failed at line $LINENO (exit $?)"' ERR

dest=/usr/local/sbin/criu
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

have_criu4() {
    local v
    v=$("$dest" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1) || return 1
    [[ $v == 4.* ]]
}

if [[ -x $dest ]] && have_criu4; then
    log "$($dest --version | head -n1) already installed at $dest"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo $0)"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian only"

# Build dependencies (from bookworm). The list is what `make criu` needs;
# docs (asciidoc, xmlto) are not built.
build_deps=(
    build-essential dpkg-dev pkg-config
    libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler python3-protobuf
    libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev
    libaio-dev uuid-dev
)
missing=()
for pkg in "${build_deps[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]} > 0)); then
    log "installing build dependencies: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/warren-criu-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
trap 'die "failed at line $LINENO (exit $?)"' ERR

# A private apt configuration that knows only trixie's source index.
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' \
    "$mirror" >"$work/apt/sources.list"
apt_private=(
    -o "Dir::Etc::sourcelist=$work/apt/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/apt/lists"
    -o "Dir::Cache=$work/apt/cache"
    -o "APT::Get::List-Cleanup=0"
)
log "fetching trixie's criu source package (private apt configuration)"
chmod 0755 "$work"
# apt drops privileges to _apt for downloads; let it write where it must.
if id _apt >/dev/null 2>&1; then chown -R _apt:root "$work/apt" "$work/src"; fi
apt-get "${apt_private[@]}" update -qq
if ! (cd "$work/src" && apt-get "${apt_private[@]}" source -qq criu >/dev/null 2>"$work/source.log"); then
    # Some mirrors (and caching proxies in front of them) carry only part of
    # the pool. Fall back to the upstream tarball of the same source package,
    # fetched by apt's own downloader and checked against the SHA-256 listed
    # in trixie's signed Sources index. (Debian's patches are not applied;
    # `make criu` of the upstream release is what is tested.)
    log "apt-get source failed ($(grep -m1 '^E:' "$work/source.log" || true)); using the orig tarball"
    orig=$(apt-cache "${apt_private[@]}" showsrc criu | awk '
        /^Checksums-Sha256:/ { in_sums = 1; next }
        /^[^ ]/ { in_sums = 0 }
        in_sums && $3 ~ /\.orig\.tar\./ { print $1, $3; exit }')
    [[ -n $orig ]] || die "no orig tarball in trixie's criu source record"
    read -r sha name <<<"$orig"
    /usr/lib/apt/apt-helper "${apt_private[@]}" download-file \
        "$mirror/pool/main/c/criu/$name" "$work/src/$name" "SHA256:$sha" >/dev/null
    tar -xf "$work/src/$name" -C "$work/src"
fi

srcdir=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'criu-*' | head -n1)
[[ -n $srcdir ]] || die "no criu source directory after apt-get source"
log "building $(basename "$srcdir") (make criu)"
make -C "$srcdir" -j"$(nproc)" criu >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    die "make criu failed"
}

install -D -m 0755 "$srcdir/criu/criu" "$dest"
have_criu4 || die "$dest does not report version 4.x after install"
log "installed $($dest --version | head -n1) at $dest"
