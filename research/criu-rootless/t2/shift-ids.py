#!/usr/bin/env python3
"""shift-ids.py DIR OLD NEW COUNT: chown every entry of DIR (no symlink follow) from OLD.. to NEW.. range.
Note: chown clears setuid/setgid bits and file capabilities; POSIX ACLs and security.capability
rootids are not rewritten (a real implementation must handle them or use idmapped mounts instead)."""
import os, sys, stat
d, old, new, count = sys.argv[1], *map(int, sys.argv[2:5])
def sh(i): return i - old + new if old <= i < old + count else i
n = 0
def fix(p):
    global n
    st = os.lstat(p)
    mode = stat.S_IMODE(st.st_mode)
    os.lchown(p, sh(st.st_uid), sh(st.st_gid))
    if not stat.S_ISLNK(st.st_mode) and mode & 0o6000:
        os.chmod(p, mode)  # chown cleared setuid/setgid
    n += 1
for root, dirs, files in os.walk(d):
    fix(root)
    for f in files: fix(os.path.join(root, f))
    for x in dirs:
        if os.path.islink(os.path.join(root, x)): fix(os.path.join(root, x))
print(f"shifted {n} entries", file=sys.stderr)
