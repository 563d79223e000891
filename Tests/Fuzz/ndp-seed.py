#!/usr/bin/env python3
"""Seeds for fuzz-ndp: a guest's router solicitations (from its link-local
address with a source link-layer option, from :: without), a neighbour
solicitation, and an advertisement behind a hop-by-hop header."""
import os, struct, sys

MAC = bytes([0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34])
LL = bytes([0xfe, 0x80] + [0] * 6 + [0xfc, 0xe1, 0xbb, 0xff, 0xfe, 0xd1, 0x12, 0x34])
ALL_ROUTERS = bytes([0xff, 2] + [0] * 13 + [2])
HOST_LL = bytes([0xfe, 0x80] + [0] * 6 + [0xfc, 0xe1, 0xbb, 0xff, 0xfe, 0xd1, 0x12, 0x35])

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def frame(icmp, src=LL, dst=ALL_ROUTERS, dmac=b"\x33\x33\0\0\0\x02", ext=b"", nh=58):
    icmp = bytearray(icmp)
    pseudo = src + dst + struct.pack("!IxxxB", len(icmp), 58)
    icmp[2:4] = struct.pack("!H", csum(pseudo + bytes(icmp)))
    ip = struct.pack("!IHBB", 0x60000000, len(ext) + len(icmp), nh, 255) + src + dst
    return dmac + MAC + b"\x86\xdd" + ip + ext + bytes(icmp)

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
seeds = {
    "rs-ll": frame(b"\x85\0\0\0\0\0\0\0\x01\x01" + MAC),
    "rs-unspecified": frame(b"\x85\0\0\0\0\0\0\0", src=bytes(16)),
    "rs-unicast": frame(b"\x85\0\0\0\0\0\0\0\x01\x01" + MAC, dst=HOST_LL, dmac=MAC[:5] + b"\x35"),
    "ns": frame(b"\x87\0\0\0\0\0\0\0" + HOST_LL + b"\x01\x01" + MAC, dst=HOST_LL),
    "ra-hbh": frame(b"\x86\0\0\0\x40\0\x07\x08" + bytes(8), ext=b"\x3a\0\x01\x04\0\0\0\0", nh=0),
}
for name, data in seeds.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(data)
