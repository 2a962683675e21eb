#!/bin/bash
# Task 1: runc checkpoint/restore of an idle Python HTTP server with the patched CRIU.
# Usage: t1-runc-bench.sh [runs] [mode]   mode: httpserver (python3 -m http.server) | app (app.py, BLOB_MB)
set -u
cd "$(dirname "$0")"
N=${1:-7}; MODE=${2:-httpserver}; BLOB_MB=${BLOB_MB:-0}
B=$PWD/bundle; ID=t1bench
rm -rf $B/ck*; runc delete -f $ID 2>/dev/null
python3 - "$B/config.json" "$MODE" "$BLOB_MB" <<'PY'
import json,sys
p,mode,blob=sys.argv[1:]
c=json.load(open(p))
cmd = '/usr/bin/python3 -m http.server 8000' if mode=='httpserver' else '/usr/bin/python3 /srv/app.py 8000'
c['process']['args']=['/bin/sh','-c',f'exec {cmd} </dev/null >/dev/null 2>&1']
c['process']['env']=[e for e in c['process']['env'] if not e.startswith('BLOB_MB=')]+[f'BLOB_MB={blob}']
json.dump(c,open(p,'w'),indent=1)
PY
cd $B
pidof() { runc state $ID | python3 -c 'import json,sys;print(json.load(sys.stdin)["pid"])'; }
ms() { python3 -c "import sys;print(round((float(sys.argv[2])-float(sys.argv[1]))*1000,1))" "$@"; }
runc run -d $ID </dev/null >/dev/null 2>&1; sleep 1.5
P=$(pidof); echo "mode=$MODE RSS: $(grep VmRSS /proc/$P/status)"
nsenter -t $P -n curl -s -o /dev/null -w 'before: %{http_code}\n' 127.0.0.1:8000/
D=(); R=(); CD=(); CR=()
for i in $(seq 1 $N); do
  rm -rf ck ck-w ck-r
  t0=$(date +%s.%N); runc checkpoint --image-path ck --work-path ck-w --tcp-established $ID || { grep Error ck-w/dump.log; exit 1; }; t1=$(date +%s.%N)
  runc restore -d --image-path ck --work-path ck-r --tcp-established $ID </dev/null >/dev/null 2>&1 || { grep Error ck-r/restore.log; exit 1; }; t2=$(date +%s.%N)
  D+=($(ms $t0 $t1)); R+=($(ms $t1 $t2))
  CD+=($(tail -1 ck-w/dump.log | sed 's/^(\([0-9.]*\)).*/\1/' | awk '{print $1*1000}')); CR+=($(tail -1 ck-r/restore.log | sed 's/^(\([0-9.]*\)).*/\1/' | awk '{print $1*1000}'))
  P=$(pidof); nsenter -t $P -n ip link set lo up
  code=$(nsenter -t $P -n curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:8000/)
  echo "run $i: checkpoint ${D[-1]} ms, restore ${R[-1]} ms, images $(du -sh ck|cut -f1), http after restore: $code"
done
p50() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo "criu's own log span: p50 dump $(p50 "${CD[@]}") ms, p50 restore $(p50 "${CR[@]}") ms"
echo "p50 checkpoint $(p50 "${D[@]}") ms, p50 restore $(p50 "${R[@]}") ms (N=$N)"
runc kill $ID KILL; sleep 0.3; runc delete -f $ID; rm -rf ck ck-w ck-r
