#!/usr/bin/env python3
"""Seeds for fuzz-dhcp: a guest's DHCP DISCOVER, REQUEST and a BOOTP request."""
import os, struct, sys

MAC = bytes([0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34])

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def frame(options):
    bootp = bytearray(236)
    bootp[0:3] = b"\x01\x01\x06"
    bootp[4:8] = b"\xde\xad\xbe\xef"
    bootp[28:34] = MAC
    bootp += b"\x63\x82\x53\x63" + options
    bootp += bytes(max(0, 300 - len(bootp)))
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes(4), b"\xff" * 4))
    ip[10:12] = struct.pack("!H", csum(bytes(ip)))
    return b"\xff" * 6 + MAC + b"\x08\x00" + bytes(ip) + udp

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
seeds = {
    "discover": frame(b"\x35\x01\x01\x37\x03\x01\x03\x0c\xff"),
    "request": frame(b"\x35\x01\x03\x32\x04\x64\x40\x01\x03\x36\x04\x64\x40\x01\x02\xff"),
    "bootp": frame(b"\xff"),
    "overload": frame(b"\x34\x01\x03\x35\x01\x01\xff"),
}
for name, data in seeds.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(data)
