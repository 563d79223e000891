"""A hostile vhost-user frontend. Every case opens a new connection, sends
something wrong, and expects the backend to answer with an error (REPLY_ACK
non-zero, or an empty GET_CONFIG) or to close the connection; after each,
the backend process must still be alive, and at the end it must serve a
well-behaved frontend."""
import os, random, socket, struct

VERSION, REPLY, NEED_REPLY = 1, 4, 8
GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE = 1, 2, 3, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, SET_VRING_KICK, SET_VRING_CALL = 8, 9, 10, 12, 13
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, ADD_MEM_REG, REM_MEM_REG = 15, 16, 37, 38
SET_LOG_BASE, SET_LOG_FD, SET_INFLIGHT_FD = 6, 7, 32
F_REPLY_ACK = 1 << 3
USER_BASE = 0x7f0000000000
MEM = 1 << 20


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)

    def send(self, request, payload=b"", flags=VERSION, fds=(), raw=None):
        data = raw if raw is not None else struct.pack("<III", request, flags, len(payload)) + payload
        try:
            if fds:
                socket.send_fds(self.s, [data], list(fds))
            else:
                self.s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def reply(self):
        """(request, payload) or None when the backend closed."""
        try:
            head = b""
            while len(head) < 12:
                b = self.s.recv(12 - len(head))
                if not b:
                    return None
                head += b
            request, flags, size = struct.unpack("<III", head)
            payload = b""
            while len(payload) < size:
                b = self.s.recv(size - len(payload))
                if not b:
                    return None
                payload += b
            assert flags & REPLY, f"reply without the reply flag: {flags:#x}"
            return request, payload
        except ConnectionResetError:
            return None

    def closed(self):
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


def u64(v):
    return struct.pack("<Q", v)


def mem_table(regions):
    body = struct.pack("<II", len(regions), 0)
    for r in regions:
        body += struct.pack("<QQQQ", *r)
    return body


def memfd(size=MEM):
    fd = os.memfd_create("bad-frontend-guest")
    os.ftruncate(fd, size)
    return fd


def expect_refused(c, what):
    """The request before was wrong: a non-zero ack or a closed connection."""
    r = c.reply()
    if r is None:
        print(f"badfrontend: {what}: connection closed")
        return
    request, payload = r
    if len(payload) == 8 and struct.unpack("<Q", payload)[0] != 0:
        print(f"badfrontend: {what}: refused (ack {struct.unpack('<Q', payload)[0]})")
        return
    raise AssertionError(f"{what}: the backend accepted it: reply {request} {payload!r}")


def acked(c, path):
    """A connection with REPLY_ACK negotiated."""
    c.send(GET_FEATURES)
    assert c.reply() is not None, "no GET_FEATURES reply"
    c.send(SET_PROTOCOL_FEATURES, u64(F_REPLY_ACK))
    c.send(SET_OWNER, flags=VERSION | NEED_REPLY)
    r = c.reply()
    assert r is not None and r[1] == u64(0), f"SET_OWNER not acked: {r}"
    return c


def run(path, proc):
    def alive(what):
        assert proc.poll() is None, f"the backend died after: {what} (status {proc.returncode})"

    def case(what, body, ack=True):
        c = Conn(path)
        try:
            if ack:
                acked(c, path)
            body(c)
        finally:
            c.close()
        alive(what)

    # Framing: the connection is closed.
    def truncated(c):
        c.send(0, raw=b"\x01\x00\x00")
    case("truncated header", truncated, ack=False)

    def bad_version(c):
        c.send(GET_FEATURES, flags=2)
        assert c.closed(), "bad version not closed"
    case("header version 2", bad_version, ack=False)

    def huge(c):
        c.send(0, raw=struct.pack("<III", GET_FEATURES, VERSION, 1 << 24))
        assert c.closed(), "huge payload not closed"
    case("payload of 16 MiB announced", huge, ack=False)

    def unknown(c):
        c.send(999, flags=VERSION | NEED_REPLY)
        expect_refused(c, "unknown request 999")
    case("unknown request", unknown)

    def unknown_no_ack(c):
        c.send(77)
        assert c.closed(), "unknown request without REPLY_ACK not closed"
    case("unknown request, no REPLY_ACK", unknown_no_ack, ack=False)

    def wrong_size(c):
        c.send(SET_FEATURES, b"\x01\x02\x03", flags=VERSION | NEED_REPLY)
        expect_refused(c, "SET_FEATURES with 3 bytes")
    case("short SET_FEATURES", wrong_size)

    # Memory tables.
    def nine_regions(c):
        regions = [(i * MEM, MEM, USER_BASE + i * MEM, 0) for i in range(9)]
        c.send(SET_MEM_TABLE, mem_table(regions), flags=VERSION | NEED_REPLY, fds=[memfd() for _ in range(9)])
        expect_refused(c, "SET_MEM_TABLE with 9 regions")
    case("too many regions", nine_regions)

    def past_file(c):
        fd = memfd()
        c.send(SET_MEM_TABLE, mem_table([(0, 64 * MEM, USER_BASE, 0)]), flags=VERSION | NEED_REPLY, fds=[fd])
        os.close(fd)
        expect_refused(c, "region larger than its file")
    case("region past the end of its file", past_file)

    def offset_wraps(c):
        fd = memfd()
        c.send(SET_MEM_TABLE, mem_table([(0, MEM, USER_BASE, (1 << 64) - 4096)]), flags=VERSION | NEED_REPLY, fds=[fd])
        os.close(fd)
        expect_refused(c, "mmap offset that wraps")
    case("offset overflow", offset_wraps)

    def missing_fd(c):
        c.send(SET_MEM_TABLE, mem_table([(0, MEM, USER_BASE, 0)]), flags=VERSION | NEED_REPLY)
        expect_refused(c, "region without a descriptor")
    case("region without a descriptor", missing_fd)

    def overlap(c):
        fds = [memfd(), memfd()]
        c.send(SET_MEM_TABLE, mem_table([(0, MEM, USER_BASE, 0), (4096, MEM, USER_BASE + 2 * MEM, 0)]),
               flags=VERSION | NEED_REPLY, fds=fds)
        for fd in fds:
            os.close(fd)
        expect_refused(c, "overlapping regions")
    case("overlapping regions", overlap)

    def with_memory(c):
        fd = memfd()
        c.send(SET_MEM_TABLE, mem_table([(0, MEM, USER_BASE, 0)]), flags=VERSION | NEED_REPLY, fds=[fd])
        os.close(fd)
        r = c.reply()
        assert r is not None and r[1] == u64(0), f"a good memory table was refused: {r}"

    # Rings.
    def vring_num(c):
        with_memory(c)
        for n in (0, 3, 65536, 100):
            c.send(SET_VRING_NUM, struct.pack("<II", 0, n), flags=VERSION | NEED_REPLY)
            expect_refused(c, f"SET_VRING_NUM {n}")
        c.send(SET_VRING_NUM, struct.pack("<II", 200, 8), flags=VERSION | NEED_REPLY)
        expect_refused(c, "SET_VRING_NUM for queue 200")
    case("bad ring sizes", vring_num)

    def vring_outside(c):
        with_memory(c)
        c.send(SET_VRING_NUM, struct.pack("<II", 0, 64), flags=VERSION | NEED_REPLY)
        c.reply()
        for desc, used, avail in ((USER_BASE + MEM - 16, USER_BASE, USER_BASE),
                                  (0x1000, 0x2000, 0x3000),
                                  (USER_BASE, (1 << 64) - 8, USER_BASE)):
            c.send(SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, desc, used, avail, 0), flags=VERSION | NEED_REPLY)
            expect_refused(c, f"rings at {desc:#x}/{used:#x}/{avail:#x}")
    case("rings outside memory", vring_outside)

    def early_kick(c):
        e = os.eventfd(0)
        c.send(SET_VRING_KICK, u64(0), flags=VERSION | NEED_REPLY, fds=[e])
        os.eventfd_write(e, 1)
        os.close(e)
        expect_refused(c, "kick before any set-up")
    case("kick before set-up", early_kick)

    def kick_after_num_only(c):
        with_memory(c)
        c.send(SET_VRING_NUM, struct.pack("<II", 0, 8), flags=VERSION | NEED_REPLY)
        c.reply()
        e = os.eventfd(0)
        c.send(SET_VRING_KICK, u64(0), flags=VERSION | NEED_REPLY, fds=[e])
        os.eventfd_write(e, 1)
        os.close(e)
        expect_refused(c, "kick before ring addresses")
    case("kick before ring addresses", kick_after_num_only)

    def unsupported(c):
        c.send(ADD_MEM_REG, struct.pack("<QQQQQ", 0, 0, MEM, USER_BASE, 0), flags=VERSION | NEED_REPLY, fds=[memfd()])
        expect_refused(c, "ADD_MEM_REG")
        c.send(REM_MEM_REG, struct.pack("<QQQQQ", 0, 0, MEM, USER_BASE, 0), flags=VERSION | NEED_REPLY)
        expect_refused(c, "REM_MEM_REG")
    case("unsupported memory hot-add", unsupported)

    def dirty_logging(c):
        # Migration's dirty log is outside what we serve: a clean "no"
        # (an error ack, not a closed connection), and the connection goes on.
        fd = memfd(4096)
        c.send(SET_LOG_BASE, struct.pack("<QQ", 4096, 0), flags=VERSION | NEED_REPLY, fds=[fd])
        os.close(fd)
        r = c.reply()
        assert r is not None and len(r[1]) == 8 and struct.unpack("<Q", r[1])[0] != 0, f"SET_LOG_BASE: {r}"
        e = os.eventfd(0)
        c.send(SET_LOG_FD, flags=VERSION | NEED_REPLY, fds=[e])
        os.close(e)
        r = c.reply()
        assert r is not None and len(r[1]) == 8 and struct.unpack("<Q", r[1])[0] != 0, f"SET_LOG_FD: {r}"
        c.send(GET_FEATURES)
        r = c.reply()
        assert r is not None and r[0] == GET_FEATURES, f"not served after the refusal: {r}"
        print("badfrontend: unsupported dirty logging: refused, connection kept")
    case("unsupported dirty logging", dirty_logging)

    def bad_inflight(c):
        fd = memfd(64)
        c.send(SET_INFLIGHT_FD, struct.pack("<QQHHI", 1 << 20, 0, 1, 128, 0), flags=VERSION | NEED_REPLY, fds=[fd])
        os.close(fd)
        expect_refused(c, "inflight region past the end of its file")
    case("bad inflight region", bad_inflight)

    def many_fds(c):
        fds = [os.eventfd(0) for _ in range(12)]
        c.send(SET_OWNER, flags=VERSION | NEED_REPLY, fds=fds)
        for fd in fds:
            os.close(fd)
        r = c.reply()
        assert r is None or struct.unpack("<Q", r[1])[0] != 0, "12 descriptors with SET_OWNER accepted"
    case("12 descriptors with one message", many_fds)

    # Random requests with random payloads, some with descriptors.
    rng = random.Random(11)
    for round_ in range(5):
        def fuzz(c):
            for _ in range(60):
                request = rng.randrange(1, 42)
                payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 4, 8, 12, 20, 24, 40, 264])))
                fds = [os.eventfd(0)] if rng.random() < 0.2 else []
                c.send(request, payload, flags=VERSION | NEED_REPLY, fds=fds)
                for fd in fds:
                    os.close(fd)
                if c.reply() is None:
                    return
        case(f"random requests, round {round_}", fuzz)

    # A well-behaved frontend is still served.
    c = Conn(path)
    c.send(GET_FEATURES)
    r = c.reply()
    assert r is not None and r[0] == GET_FEATURES and len(r[1]) == 8, f"a good frontend was not served: {r}"
    c.close()
    alive("a good frontend")
