#!/usr/bin/env python3
"""filter-ipsave.py FILE KIND KEEP_IFINDEX: keep only records of one interface in an `ip addr save` /
`ip route save` stream (4-byte magic + netlink messages), as CRIU stores in ifaddr-/route-/route6-*.img."""
import struct, sys
path, kind, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(path, "rb").read()
out, off = bytearray(data[:4]), 4
kept = dropped = 0
while off + 16 <= len(data):
    ln, typ = struct.unpack_from("=IH", data, off)
    msg = data[off:off + ln]
    if kind == "addr":
        idx = struct.unpack_from("=I", msg, 16 + 4)[0]    # ifaddrmsg.ifa_index
        attrs_off = 16 + 8
    else:
        idx, attrs_off = None, 16 + 12                     # rtmsg is 12 bytes
        a = attrs_off
        while a + 4 <= len(msg):
            alen, atype = struct.unpack_from("=HH", msg, a)
            if alen < 4: break
            if atype == 4: idx = struct.unpack_from("=I", msg, a + 4)[0]   # RTA_OIF
            a += (alen + 3) & ~3
    if idx is None or idx == keep:
        out += msg; kept += 1
    else:
        dropped += 1
    off += (ln + 3) & ~3
open(path, "wb").write(out)
print(f"{path}: kept {kept}, dropped {dropped}", file=sys.stderr)
