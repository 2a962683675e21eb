#!/bin/bash
# rewrite-userns.sh SRC_IMG DST_IMG NEWBASE: DST_IMG = hard-linked copy of SRC_IMG whose userns-*.img
# maps the sandbox's ids onto NEWBASE (every lower_first shifted by NEWBASE - old base), via crit.
set -eu
S=$1; T=$2; NEW=$3; CRIT=/work/criu-proto/crit.sh
rm -rf "$T"; mkdir -p "$T"; cp -al "$S"/*.img "$T"/
for f in "$T"/userns-*.img; do
  $CRIT decode -i "$f" -o "$f.json"
  /usr/bin/python3 - "$f.json" "$NEW" <<'PY'
import json, sys
p, new = sys.argv[1], int(sys.argv[2])
j = json.load(open(p))
for e in j["entries"]:
    for m in ("uid_map", "gid_map"):
        old = e[m][0]["lower_first"]
        for ext in e[m]:
            ext["lower_first"] = ext["lower_first"] - old + new
json.dump(j, open(p, "w"))
PY
  rm -f "$f"; $CRIT encode -i "$f.json" -o "$f"; rm -f "$f.json"
done
