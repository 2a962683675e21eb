#!/usr/bin/env bash
# Install the Debian packages that Warren's tests and benchmarks need.
#
# Idempotent: packages that are already installed are left alone, and
# `apt-get update` runs only when something is missing. Meant for a fresh
# Debian 12 machine as root; CI runs it with CI=true before the tests.
#
# Usage: scripts/install-deps.sh
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'die "failed at line $LINENO (exit $?)"' ERR

# package -> why we need it. Keep this list sorted by purpose, not by name.
packages=(
    crun           # peer runtime for bench/run create|exec
    runc           # peer runtime; also `runc spec` writes the bench's OCI config
    bubblewrap     # peer runtime (bwrap)
    runsc          # gVisor: peer of bench/run checkpoint (runsc checkpoint/restore)
    busybox-static # the static busybox that test and bench rootfs images are built from
    iproute2       # ip netns / veth / bridge for networking tests
    nftables       # nft, for sandbox egress rules
    procps         # ps, pgrep: leak checks
    psmisc         # fuser, pstree: leak checks and debugging
    util-linux     # unshare, nsenter, mount, losetup
    e2fsprogs      # mkfs.ext4, for loop-device disk limits
    python3        # helper scripts in tests
    python3-venv   # the Python SDK's tests run in a virtual environment (sdk/python)
    git            # "normal programs still work" under the seccomp policy
    docker-registry # the reference OCI registry that image pull tests and bench/run pull serve on loopback
    skopeo         # pushes test images to it; the peer of bench/run pull
    apache2-utils  # htpasswd (bcrypt) for the registry auth tests
    zstd           # zstd-compressed test layers
    tmux           # drives `warren sandbox shell` in a real terminal in the e2e tests
    vim-tiny       # a full-screen editor the terminal test runs inside a sandbox
    nodejs         # the dev server tunnel tests run inside sandboxes; runs playwright-core
    chromium       # headless browser of the tunnel browser test
    curl           # HTTPS/HTTP2 through the relay, verified against Warren's CA
    openssl        # the relay certificate's key pin for Chromium
    socat          # peer of the relay's raw TCP front in bench/run relay
    nginx-light    # peer of the relay's HTTPS front (TLS-terminating proxy) in bench/run relay
)

# Commands that must work afterwards; checked so a broken install fails here
# rather than as a confusing test failure later.
commands=(crun runc runsc bwrap busybox ip nft ps fuser unshare nsenter losetup mkfs.ext4 python3 git docker-registry skopeo htpasswd zstd tmux vim.tiny node chromium curl openssl socat nginx)

[[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo $0)"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian only"

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    log "all ${#packages[@]} packages already installed"
else
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Packages are installed for their binaries only: keep their services
    # (nginx, docker-registry) from starting and binding ports, as Docker
    # images do, unless the host already has its own policy.
    policy=/usr/sbin/policy-rc.d
    own_policy=false
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && own_policy=true
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if $own_policy; then rm -f "$policy"; trap - EXIT; fi
    log "installed: ${missing[*]}"
fi

for cmd in "${commands[@]}"; do
    command -v "$cmd" >/dev/null || die "command '$cmd' is still missing after install"
done

# busybox must be the static build: test and bench rootfs images contain only
# bin/busybox and no shared libraries.
busybox_path=$(command -v busybox)
if ldd "$busybox_path" >/dev/null 2>&1; then
    die "$busybox_path is dynamically linked; the busybox-static package should provide it"
fi

# Debian's nodejs ships npm separately; NodeSource's bundles it (and
# conflicts with Debian's npm package), so only install npm when missing.
if ! command -v npm >/dev/null; then
    log "installing: npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

# The tests' sandboxes run the host's /usr/bin/node (the `host` image binds
# /usr), so node must live there, not only in /usr/local.
[[ -x /usr/bin/node ]] || die "/usr/bin/node is missing (the nodejs package provides it)"

# playwright-core drives Debian's Chromium in the tunnel browser test; the
# version is pinned by package-lock.json.
browser_dir="$(cd "$(dirname "$0")/.." && pwd)/crates/warren-server/tests/browser"
want=$(node -p "require('$browser_dir/package.json').dependencies['playwright-core']")
have=$(node -p "try { require('$browser_dir/node_modules/playwright-core/package.json').version } catch (e) { '' }")
if [[ $have != "$want" ]]; then
    log "installing playwright-core into $browser_dir"
    npm ci --prefix "$browser_dir" --no-audit --no-fund --loglevel=error >/dev/null
fi

# CRIU 4.x (memory snapshots), built from trixie's source; idempotent.
"$(dirname "$0")/install-criu.sh"

log "ok"
