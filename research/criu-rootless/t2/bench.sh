#!/bin/bash
# bench.sh [N]: rootless-layout sandbox: N consistent checkpoints (--leave-running) and N fork restores
# each of: same id range, other id range (userns rewrite + chown + idmapped lower); the source has a veth,
# which is stripped from the image, and a fresh veth (peer in a netns we create) is plumbed in. Prints p50s.
set -u
D=$(cd "$(dirname "$0")" && pwd); cd "$D"; N=${1:-7}
p50() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
P=$(./run-sandbox.sh b); echo "$P" > inst/b/pid; sleep 2
echo "sandbox init $P, python RSS $(grep VmRSS /proc/$(pgrep -P $P python3)/status | awk '{print $2}') kB, init RSS $(grep VmRSS /proc/$P/status | awk '{print $2}') kB"
ip netns add cp-bench; ip -n cp-bench link set lo up
ip link add cp-b0 netns cp-bench type veth peer name eth0 netns /proc/$P/ns/net
nsenter -t $P -n sh -c 'ip addr add 10.213.9.2/24 dev eth0; ip link set eth0 up'; ip -n cp-bench addr add 10.213.9.1/24 dev cp-b0; ip -n cp-bench link set cp-b0 up
nsenter -t $P -n curl -s 127.0.0.1:8000/count >/dev/null
CK=(); CD=(); RS=(); RO=(); RV=(); TOT=()
for i in $(seq $N); do
  out=$(CGMODE=soft ./checkpoint.sh $P /sys/fs/cgroup/freezer/criu-proto-b $D/img/b$i) || exit 1; echo "$out"
  CK+=($(echo "$out" | sed 's/.*total \([0-9]*\) ms.*/\1/')); CD+=($(echo "$out" | sed 's/.*criu_dump \([0-9]*\) ms.*/\1/'))
done
i=0
for mode in same other; do
  for j in $(seq $N); do i=$((i+1)); n=k$i
    case $mode in same) base=200000;; *) base=$((300000 + j*65536));; esac
    t0=$(date +%s%N)
    out=$(STRIP_VETH=1 CGMODE=soft ./fork-restore.sh $D/img/b1/criu $D/img/b1/upper $n $base --cgroup-root freezer:/criu-proto-$n)
    [ $? = 0 ] || { echo "restore failed: $out"; exit 1; }
    R=$(cat inst/$n/pid)
    if true; then
      ip link add cp-k$j netns cp-bench type veth peer name eth0 netns /proc/$R/ns/net
      nsenter -t $R -n sh -c "ip addr add 10.213.$((10+j)).2/24 dev eth0; ip link set eth0 up"
      ip -n cp-bench addr add 10.213.$((10+j)).1/24 dev cp-k$j; ip -n cp-bench link set cp-k$j up
      TOT+=($(( ($(date +%s%N)-t0)/1000000 )))
      got="$(ip netns exec cp-bench curl -s -m 3 10.213.$((10+j)).2:8000/count) via veth"
    else got=$(nsenter -t $R -n curl -s -m 3 127.0.0.1:8000/count); fi
    echo "$out -> $got"
    ms=$(echo "$out" | sed 's/.*criu_restore \([0-9]*\) ms.*/\1/')
    case $mode in same) RS+=($ms);; other) RO+=($ms);; esac
    kill -KILL $R; sleep 0.3; rmdir /sys/fs/cgroup/freezer/criu-proto-$n 2>/dev/null
  done
done
echo "p50 checkpoint total (freeze+copy+dump+thaw) $(p50 "${CK[@]}") ms; criu dump $(p50 "${CD[@]}") ms"
echo "p50 criu restore: same range $(p50 "${RS[@]}") ms, other range $(p50 "${RO[@]}") ms; end-to-end per fork (crit prep + upper copy + restore + veth plumb) $(p50 "${TOT[@]}") ms (N=$N per mode)"
kill -KILL $P; sleep 0.5; ./cleanup.sh
