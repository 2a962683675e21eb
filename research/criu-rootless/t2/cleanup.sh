#!/bin/bash
# Kill every sandbox started/restored by these scripts (by the pids they recorded), remove their
# cgroups, netns and instance dirs. Only our own pids: inst/*/pid files.
D=$(cd "$(dirname "$0")" && pwd)
for f in "$D"/inst/*/pid; do [ -f "$f" ] || continue; p=$(cat "$f")
  [ "$(awk '{print $2; exit}' /proc/$p/uid_map 2>/dev/null)" -ge 100000 ] 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
sleep 0.5
for cg in /sys/fs/cgroup/freezer/criu-proto-*; do [ -d "$cg" ] || continue; echo THAWED > $cg/freezer.state
  for p in $(cat $cg/cgroup.procs); do kill -KILL $p 2>/dev/null; done; sleep 0.2; rmdir $cg; done
for n in $(ip netns list | awk '/^cp-/{print $1}'); do ip netns del $n; done
rm -rf "$D"/inst "$D"/img
