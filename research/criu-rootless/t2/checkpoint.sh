#!/bin/bash
# checkpoint.sh PID CGROUP OUT [extra criu dump args]: consistent checkpoint of a running sandbox:
# freeze its (v1 freezer) cgroup, copy the overlay upper to OUT/upper, criu dump --freeze-cgroup
# --leave-running into OUT/criu, thaw. Upper dir is found from init's root overlay options.
set -eu
P=$1; CG=$2; OUT=$3; shift 3
UP=$(awk '$5=="/" {print}' /proc/$P/mountinfo | sed -n 's/.*upperdir=\([^,]*\).*/\1/p' | head -1)
rm -rf "$OUT"; mkdir -p "$OUT/criu"; chmod 700 "$OUT"
now() { date +%s%N; }
EXT="--external mnt[/usr]:usr"; for n in null zero random urandom full; do EXT="$EXT --external mnt[/dev/$n]:dev-$n"; done
[ -n "${NETEXT:-}" ] && EXT="$EXT --external net[$(stat -L -c %i /proc/$P/ns/net)]:net0"
t0=$(now); echo FROZEN > $CG/freezer.state
for i in $(seq 500); do [ "$(cat $CG/freezer.state)" = FROZEN ] && break; sleep 0.002; done
t1=$(now); cp -a --reflink=auto "$UP" "$OUT/upper"
t2=$(now)
criu dump -t $P -D "$OUT/criu" -o dump.log -v4 --leave-running --tcp-established --manage-cgroups=${CGMODE:-ignore} \
  --freeze-cgroup $CG $EXT "$@" || { echo THAWED > $CG/freezer.state; grep -n Error "$OUT/criu/dump.log" | grep -v rlimit >&2; exit 1; }
t3=$(now); echo THAWED > $CG/freezer.state; t4=$(now)
echo "checkpoint: freeze $(( (t1-t0)/1000000 )) ms, upper_copy $(( (t2-t1)/1000000 )) ms, criu_dump $(( (t3-t2)/1000000 )) ms, thaw $(( (t4-t3)/1000000 )) ms, total $(( (t4-t0)/1000000 )) ms, images $(du -sh "$OUT"/criu | cut -f1)"
