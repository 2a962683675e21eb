#!/bin/bash
# Start a rootless-layout sandbox: one unshare call creates a user namespace (0..65535 -> BASE..BASE+65535)
# that owns new mnt, pid, uts, ipc, net and cgroup namespaces. Inside: overlay root (lower=skel,
# upper=inst/NAME/upper), ro bind of host /usr, /dev tmpfs + bound nodes, /proc, /tmp tmpfs, pivot_root.
# Prints the host pid of the sandbox's init (pid 1 inside) on stdout.
# Usage: run-sandbox.sh NAME [BASE]
set -eu
D=$(cd "$(dirname "$0")" && pwd); NAME=$1; BASE=${2:-200000}
I=$D/inst/$NAME; mkdir -p "$I"/{upper,work,merged}; chown "$BASE:$BASE" "$I"/{upper,work,merged}
cat >"$I/inner.sh" <<INNER
set -e
mount --make-rprivate /
M=$I/merged
mount -t overlay overlay -o lowerdir=$D/skel,upperdir=$I/upper,workdir=$I/work \$M
mount --bind /usr \$M/usr; mount -o remount,bind,ro \$M/usr
mount -t tmpfs -o mode=755,size=1m devtmp \$M/dev
for n in null zero random urandom full; do touch \$M/dev/\$n; mount --bind /dev/\$n \$M/dev/\$n; done
mount -t proc proc \$M/proc
mount -t tmpfs -o mode=1777,size=16m tmp \$M/tmp
hostname sbx-$NAME
ip link set lo up
cd \$M; pivot_root . .oldroot; umount -l /.oldroot
cd /
exec setsid /bin/sh /srv/init.sh
INNER
CG=/sys/fs/cgroup/freezer/criu-proto-$NAME; mkdir -p $CG
/bin/sh -c 'echo $$ > '$CG'/cgroup.procs; exec "$0" "$@"' $D/userns-run $BASE 65536 -- /bin/sh "$I/inner.sh" </dev/null >"$I/unshare.log" 2>&1 &
UPID=$!
kid() { cat /proc/$1/task/$1/children 2>/dev/null | tr -d ' '; }
for i in $(seq 100); do C1=$(kid $UPID); [ -n "$C1" ] && C=$(kid $C1) && [ -n "$C" ] && break; sleep 0.02; done
# wait for init to exec the init script
for i in $(seq 100); do grep -q init.sh /proc/$C/cmdline 2>/dev/null && break; sleep 0.02; done
echo "$C"
