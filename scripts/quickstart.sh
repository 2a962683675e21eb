#!/usr/bin/env bash
# Build Warren, start `warren serve` (embedded state under /var/lib/warren),
# and run a first sandbox through the API. Run as root on Debian 12.
# The server keeps running afterwards; stop it with: kill $(cat /run/warren.pid)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ $(id -u) -eq 0 ]] || { echo "quickstart: run as root (sandboxes need namespaces and cgroups)" >&2; exit 1; }

# Sandbox networking needs nftables (Debian installs it by default; minimal
# images may lack it). Without it, start the server with --no-network.
if ! command -v nft >/dev/null; then
    echo "quickstart: installing nftables (sandbox egress rules)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables >/dev/null
fi

cargo build --release --quiet -p warren-cli -p warren-init
# The node prefers the small warren-init installed next to warren.
install -m 0755 target/release/warren target/release/warren-init /usr/local/bin/
warren=/usr/local/bin/warren
echo "quickstart: installed warren and warren-init in /usr/local/bin"

if ! "$warren" sandbox ls >/dev/null 2>&1; then
    log=/var/log/warren-serve.log
    nohup "$warren" serve >"$log" 2>&1 &
    echo $! >/run/warren.pid
    echo "quickstart: started warren serve on 127.0.0.1:7070, tunnels on 127.0.0.1:8443 (pid $(cat /run/warren.pid), log $log)"
    for _ in $(seq 1 100); do
        "$warren" sandbox ls >/dev/null 2>&1 && break
        kill -0 "$(cat /run/warren.pid)" 2>/dev/null || { echo "quickstart: warren serve exited; see $log" >&2; exit 1; }
        sleep 0.1
    done
fi

echo "quickstart: running a first sandbox"
"$warren" run -- sh -c 'echo "hello from $(hostname)"; id; cat /proc/self/uid_map'
