#!/bin/bash
# strip-veth.sh IMG: remove VETH devices from IMG's netdev-*.img (crit decode/filter/encode), so CRIU
# restores a network namespace with lo only; the runtime plumbs a fresh veth in after restore.
# IMG should be a private (hard-linked) copy: the file is replaced, not modified in place.
set -eu
for f in "$1"/netdev-*.img; do
  /work/criu-proto/crit.sh decode -i "$f" -o "$f.json"
  /usr/bin/python3 - "$f.json" <<'PY'
import json, sys
p = sys.argv[1]; j = json.load(open(p))
j["entries"] = [e for e in j["entries"] if e.get("type") != "VETH"]
json.dump(j, open(p, "w"))
PY
  rm -f "$f"; /work/criu-proto/crit.sh encode -i "$f.json" -o "$f"; rm -f "$f.json"
done
# addresses and routes of the dropped devices: keep lo's (ifindex 1) only
for f in "$1"/ifaddr-*.img; do cp "$f" "$f.new"; /usr/bin/python3 "$(dirname "$0")/filter-ipsave.py" "$f.new" addr 1; mv -f "$f.new" "$f"; done
for f in "$1"/route-*.img "$1"/route6-*.img; do cp "$f" "$f.new"; /usr/bin/python3 "$(dirname "$0")/filter-ipsave.py" "$f.new" route 1; mv -f "$f.new" "$f"; done
