#!/bin/bash
# Lower (read-only) layer of the rootless-layout sandbox: a skeleton; /usr comes from a ro bind of host /usr.
set -e
S=${1:-$(dirname "$0")/skel}
rm -rf "$S"; mkdir -p "$S"/{usr,proc,sys,dev,tmp,etc,srv,root,run,.oldroot}
ln -s usr/bin "$S/bin"; ln -s usr/lib "$S/lib"; ln -s usr/lib64 "$S/lib64"; ln -s usr/sbin "$S/sbin"
cp /etc/passwd /etc/group /etc/nsswitch.conf "$S/etc/"; echo "hello from the sandbox" >"$S/srv/index.html"
cp /work/criu-proto/t1/app.py "$S/srv/app.py"
cat >"$S/srv/init.sh" <<'INIT'
#!/bin/sh
# pid 1 of the sandbox: start the HTTP server, then count forever (the counter lives in this shell's memory).
exec </dev/null >/dev/null 2>&1
cd /srv
/usr/bin/python3 /srv/app.py 8000 &
exec 3>>/srv/count.log
i=0
while :; do
  i=$((i+1))
  echo "$i $(cat /proc/sys/kernel/hostname)" >&3
  sleep 0.2
done
INIT
chmod -R a+rX "$S"; chmod +x "$S/srv/init.sh"
chown -R -h ${OWNER:-200000}:${OWNER:-200000} "$S"
