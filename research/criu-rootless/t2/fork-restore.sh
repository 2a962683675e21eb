#!/bin/bash
# Restore checkpoint IMG (with its upper copy UPPER_SRC) as a NEW sandbox NAME, optionally in another id range.
#   fork-restore.sh IMG UPPER_SRC NAME NEWBASE [extra criu restore args...]
# Steps: (1) if NEWBASE differs from the image's userns base: hard-linked image copy with userns-*.img
# rewritten (crit), upper copy chowned by the delta, lower (skel) bind-mounted idmapped by the delta;
# (2) in a private mount namespace: overlay(lower, new upper) -> inst/NAME/merged; (3) criu restore --root.
# STRIP_VETH=1: drop veth devices from the image (restored netns has lo only; plumb a veth in afterwards).
# NETNS=/path/to/netns: join that network namespace (checkpoint taken with NETEXT=1: --external net[ino]:net0).
# Writes inst/NAME/pid (host pid of restored init) and prints phase timings in ms.
set -eu
D=$(cd "$(dirname "$0")" && pwd); IMG=$1; UP=$2; NAME=$3; NEW=$4; shift 4
I=$D/inst/$NAME; rm -rf "$I"; mkdir -p "$I"/{work,merged,lower}
now() { date +%s%N; }; t0=$(now)
OLD=$(/work/criu-proto/crit.sh show "$(ls "$IMG"/userns-*.img | head -1)" | /usr/bin/python3 -c 'import json,sys;print(json.load(sys.stdin)["entries"][0]["uid_map"][0]["lower_first"])')
RIMG=$IMG; LOWER=$D/skel; IDMAP=""
if [ "$NEW" != "$OLD" ]; then
  RIMG=$I/img; "$D/rewrite-userns.sh" "$IMG" "$RIMG" "$NEW"
  IDMAP="$D/idmap-bind $D/skel $I/lower $OLD $NEW 65536 &&"; LOWER=$I/lower
fi
if [ -n "${STRIP_VETH:-}" ]; then
  if [ "$RIMG" = "$IMG" ]; then RIMG=$I/img; rm -rf "$RIMG"; mkdir -p "$RIMG"; cp -al "$IMG"/*.img "$RIMG"/; fi
  "$D/strip-veth.sh" "$RIMG"
fi
t1=$(now)
cp -a --reflink=auto "$UP" "$I/upper"
[ "$NEW" != "$OLD" ] && /usr/bin/python3 "$D/shift-ids.py" "$I/upper" "$OLD" "$NEW" 65536 2>/dev/null
chown "$NEW:$NEW" "$I/work" "$I/merged"
t2=$(now)
EXT="--external mnt[usr]:/usr"; for n in null zero random urandom full; do EXT="$EXT --external mnt[dev-$n]:/dev/$n"; done
CG=/sys/fs/cgroup/freezer/criu-proto-$NAME; mkdir -p $CG
/bin/sh -c 'echo $$ > '$CG'/cgroup.procs; exec "$0" "$@"' unshare -m --propagation private /bin/sh -c "
$IDMAP mount -t overlay overlay -o lowerdir=$LOWER,upperdir=$I/upper,workdir=$I/work $I/merged &&
${NETNS:+exec 5<$NETNS;} exec criu restore -D $RIMG -o $I/restore.log -v4 --tcp-established --restore-detached --pidfile $I/pid \
  --root $I/merged --manage-cgroups=${CGMODE:-ignore} $EXT ${NETNS:+--inherit-fd fd[5]:net0} $*" || { grep -n Error "$I/restore.log" | grep -v 'rlimit\|already assigned' >&2; exit 1; }
t3=$(now)
echo "fork-restore $NAME: base $OLD->$NEW prep_img $(( (t1-t0)/1000000 )) ms, upper_copy $(( (t2-t1)/1000000 )) ms, criu_restore $(( (t3-t2)/1000000 )) ms"
