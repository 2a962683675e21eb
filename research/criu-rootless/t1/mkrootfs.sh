#!/bin/bash
# Host-derived minimal rootfs skeleton: /usr is bind-mounted (ro) by the runtime.
set -e
r=$1; mkdir -p $r/{usr,proc,sys,dev,tmp,etc,srv,root,run}
ln -sfn usr/bin $r/bin; ln -sfn usr/lib $r/lib; ln -sfn usr/lib64 $r/lib64; ln -sfn usr/sbin $r/sbin
cp /etc/passwd /etc/group $r/etc/; echo "hello from the server" > $r/srv/index.html
cp "$(dirname $0)/app.py" $r/srv/app.py 2>/dev/null || cp /work/criu-proto/t1/app.py $r/srv/app.py
