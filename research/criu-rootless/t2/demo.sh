#!/bin/bash
# demo.sh: the working recipe end to end, then cleanup.
#  1. rootless-layout sandbox "src" (userns 0..65535 -> 200000.. owns mnt/pid/uts/ipc/net/cgroup ns;
#     overlay root; ro /usr bind; /dev tmpfs + bound nodes; /proc; /tmp tmpfs; own freezer cgroup)
#  2. 3 HTTP requests (in-memory counter = 3), consistent checkpoint (freeze, copy upper, criu dump, thaw)
#  3. three forks from that one checkpoint, each in a different id range, own cgroup, own netns
#     (CRIU-created with --empty-ns net; action script brings lo up and plumbs a veth whose peer is in
#     a netns we created), each answers hits=4 and its shell counter continues without a gap
#  4. fork 1 is checkpointed again and restored again (range 900000) -> hits=5
set -u
D=$(cd "$(dirname "$0")" && pwd); cd "$D"
fail() { echo "FAIL: $*"; ./cleanup.sh; exit 1; }
gap() { awk 'NR>1 && $1!=p+1 {g=1} {p=$1} END{print (g?"GAP":"no gap") ", last " p}' "$1"; }
P=$(./run-sandbox.sh src) || fail start; echo "$P" > inst/src/pid; sleep 1.5
for i in 1 2 3; do nsenter -t $P -n curl -s 127.0.0.1:8000/count >/dev/null; done
ip netns add cp-demo; ip -n cp-demo link set lo up
CGMODE=soft ./checkpoint.sh $P /sys/fs/cgroup/freezer/criu-proto-src $D/img/ck || fail checkpoint
restore() { # restore IMG UPPER NAME BASE NET
  CGMODE=soft HOOK_VETH=cp-$3 HOOK_PEERNS=cp-demo HOOK_ADDR=10.213.$5.2/24 \
    ./fork-restore.sh $1 $2 $3 $4 --cgroup-root freezer:/criu-proto-$3 --empty-ns net --action-script $D/net-hook.sh || fail "restore $3"
  ip -n cp-demo addr add 10.213.$5.1/24 dev cp-$3
}
n=0
for base in 300000 400000 500000; do n=$((n+1))
  restore $D/img/ck/criu $D/img/ck/upper fork$n $base $((40+n))
done
sleep 1
for n in 1 2 3; do R=$(cat inst/fork$n/pid)
  echo "fork$n: uid_map '$(cat /proc/$R/uid_map | xargs)', netns $(readlink /proc/$R/ns/net), via veth: $(ip netns exec cp-demo curl -s -m 3 10.213.$((40+n)).2:8000/count | tr -d '\n'), count.log: $(gap inst/fork$n/upper/srv/count.log)"
done
echo "source still running: $(nsenter -t $P -n curl -s 127.0.0.1:8000/count | tr -d '\n'), count.log: $(gap inst/src/upper/srv/count.log)"
R=$(cat inst/fork1/pid)
CGMODE=soft ./checkpoint.sh $R /sys/fs/cgroup/freezer/criu-proto-fork1 $D/img/ck2 || fail re-checkpoint
restore $D/img/ck2/criu $D/img/ck2/upper fork1b 900000 50
R=$(cat inst/fork1b/pid); sleep 0.5
echo "fork1b (fork of fork1): uid_map '$(cat /proc/$R/uid_map | xargs)', via veth: $(ip netns exec cp-demo curl -s -m 3 10.213.50.2:8000/count | tr -d '\n'), count.log: $(gap inst/fork1b/upper/srv/count.log)"
./cleanup.sh
