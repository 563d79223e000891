"""A well-behaved vhost-user frontend for the vmd-managed backend test:
connects to SOCKET, asks GET_FEATURES, prints "pid PID features HEX" and
keeps the connection open until its standard input closes."""
import os, struct, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from badfrontend import Conn, GET_FEATURES

c = Conn(sys.argv[1])
c.send(GET_FEATURES)
r = c.reply()
if r is None or r[0] != GET_FEATURES or len(r[1]) != 8:
    print(f"no GET_FEATURES reply: {r}", flush=True)
    sys.exit(1)
print(f"pid {os.getpid()} features {struct.unpack('<Q', r[1])[0]:#x}", flush=True)
sys.stdin.read()
c.close()
