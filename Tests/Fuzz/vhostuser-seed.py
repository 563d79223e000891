#!/usr/bin/env python3
"""Writes a seed for fuzz-vhostuser: a 256-byte guest memory image holding
one rng request (a descriptor at 0x0 pointing at 0x80, length 16,
device-writable; avail ring at 0x40 with index 1 and head 0), then QEMU's
start sequence for one queue of 4 entries. Usage: vhostuser-seed.py FILE"""
import struct, sys

image = bytearray(256)
struct.pack_into("<QIHH", image, 0, 0x80, 16, 2, 0)        # descriptor 0
struct.pack_into("<HHH", image, 0x40, 0, 1, 0)              # avail: flags, idx 1, ring[0] = 0


def msg(request, payload=b"", flags=1):
    return struct.pack("<III", request, flags, len(payload)) + payload


u64 = lambda v: struct.pack("<Q", v)
stream = msg(1) + msg(16, u64(1 << 3 | 1 << 12)) + msg(3) + msg(2, u64(1 << 32 | 1 << 30))
stream += msg(5, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 65536, 0x7f0000000000, 0))
stream += msg(31, struct.pack("<QQHHI", 0, 0, 1, 4, 0))
stream += msg(8, struct.pack("<II", 0, 4)) + msg(10, struct.pack("<II", 0, 0))
stream += msg(9, struct.pack("<IIQQQQ", 0, 0, 0x7f0000000000, 0x7f0000000000 + 0xa0, 0x7f0000000000 + 0x40, 0))
stream += msg(13, u64(0)) + msg(12, u64(0)) + msg(18, struct.pack("<II", 0, 1))
stream += msg(24, struct.pack("<III", 0, 8, 0) + bytes(8)) + msg(11, struct.pack("<II", 0, 0))
stream += msg(34) + msg(40)
open(sys.argv[1], "wb").write(bytes(image) + stream)
