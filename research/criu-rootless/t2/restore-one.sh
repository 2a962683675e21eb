#!/bin/bash
# Restore a checkpoint IMG as a new sandbox NAME: copy the checkpointed upper (UPPER_SRC) into
# inst/NAME/upper, mount a fresh overlay in a private mount namespace and run criu restore --root there.
# Usage: restore-one.sh IMG NAME UPPER_SRC [extra criu args...]
set -eu
D=$(cd "$(dirname "$0")" && pwd); IMG=$1; NAME=$2; UP=$3; shift 3
I=$D/inst/$NAME; rm -rf "$I"; mkdir -p "$I"/{work,merged}
cp -a --reflink=auto "$UP" "$I/upper"
OWN=$(stat -c %u "$UP"); chown "$OWN:$OWN" "$I/work" "$I/merged"
EXT="--external mnt[usr]:/usr"; for n in null zero random urandom full; do EXT="$EXT --external mnt[dev-$n]:/dev/$n"; done
unshare -m --propagation private /bin/sh -c "
mount -t overlay overlay -o lowerdir=$D/skel,upperdir=$I/upper,workdir=$I/work $I/merged &&
exec criu restore -D $IMG -o restore-$NAME.log -v4 --tcp-established --restore-detached --pidfile $I/pid --root $I/merged $EXT $*"
