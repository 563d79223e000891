import Glibc
import CVMDSys
import VMDSystem

/// OpenBSD's imsg framing, bit for bit: a 16-byte header in host byte order
/// (type u32, len u16, flags u16, peerid u32, pid u32; len counts the
/// header), at most 16384 bytes per message, at most one descriptor per
/// message passed with SCM_RIGHTS and matched to it by the IMSGF_HASFD flag.
public enum ImsgWire {
    public static let headerSize = 16
    public static let maxMessageSize = 16384
    public static let maxPayload = maxMessageSize - headerSize
    public static let hasFDFlag: UInt16 = 1

    /// Appends an imsg_hdr (type, len, flags, peerid, pid; host byte
    /// order) to `out`: the one place the header's layout is written.
    /// `flags`' descriptor bit is set from `hasFD`, never taken from the caller.
    static func appendHeader(type: UInt32, length: UInt16, flags: UInt16, peerID: UInt32, pid: UInt32,
                             hasFD: Bool, to out: inout [UInt8]) {
        var f = flags & ~hasFDFlag
        if hasFD { f |= hasFDFlag }
        withUnsafeBytes(of: type) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: length) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: f) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: peerID) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: pid) { out.append(contentsOf: $0) }
    }
}

public struct Imsg: Equatable {
    public var type: UInt32
    public var flags: UInt16
    public var peerID: UInt32
    public var pid: UInt32
    public var data: [UInt8]
    /// The descriptor sent with this message; the receiver owns it.
    public var fd: Int32?

    public init(type: UInt32, flags: UInt16 = 0, peerID: UInt32 = 0, pid: UInt32 = 0,
                data: [UInt8] = [], fd: Int32? = nil) {
        self.type = type
        self.flags = flags
        self.peerID = peerID
        self.pid = pid
        self.data = data
        self.fd = fd
    }

    /// The header + payload as they travel on the wire.
    public func encoded() throws -> [UInt8] {
        let len = ImsgWire.headerSize + data.count
        guard len <= ImsgWire.maxMessageSize else { throw ImsgError.tooLarge(len) }
        var out = [UInt8]()
        out.reserveCapacity(len)
        ImsgWire.appendHeader(type: type, length: UInt16(len), flags: flags, peerID: peerID, pid: pid,
                              hasFD: fd != nil, to: &out)
        out.append(contentsOf: data)
        return out
    }
}

public enum ImsgError: Error, Equatable, CustomStringConvertible {
    case badLength(Int)
    case tooLarge(Int)
    case endOfFileInMessage(buffered: Int)
    case closed
    case queueFull(Int)
    case descriptorNotRelayed(type: UInt32)
    case system(SystemError)

    public var description: String {
        switch self {
        case .badLength(let n): return "bad message length \(n) (must be 16...16384)"
        case .tooLarge(let n): return "message of \(n) bytes exceeds 16384"
        case .endOfFileInMessage(let n): return "end of file in the middle of a message (\(n) bytes buffered)"
        case .closed: return "connection closed"
        case .queueFull(let n): return "peer does not read: \(n) bytes already queued for it"
        case .descriptorNotRelayed(let t): return "message type \(t) carries a descriptor: not relayed"
        case .system(let e): return e.description
        }
    }
}

/// One end of an imsg connection (OpenBSD's `struct imsgbuf`): buffered
/// writes that survive EAGAIN and short writes, and reads that split and join
/// messages across reads. Works on blocking and non-blocking sockets.
public final class ImsgBuffer {
    public let fd: Int32
    private var readBuffer: [UInt8] = []
    private var readStart = 0
    private var receivedFDs: [Int32] = []
    /// Outgoing messages; `queue[queueHead...]` are not fully written yet
    /// (a head index, not removeFirst: O(1) per message however deep).
    private var queue: [(bytes: [UInt8], fd: Int32?, offset: Int)] = []
    private var queueHead = 0
    public private(set) var sawEndOfFile = false
    /// Bytes queued and not yet written.
    public private(set) var pendingWriteBytes = 0
    /// compose() refuses (throws `.queueFull`) past this many queued bytes:
    /// a peer that does not read cannot make us grow without bound.
    public var maxPendingWriteBytes: Int

    public static let defaultMaxPendingWriteBytes = 16 << 20

    public init(fd: Int32, maxPendingWriteBytes: Int = ImsgBuffer.defaultMaxPendingWriteBytes) {
        self.fd = fd
        self.maxPendingWriteBytes = maxPendingWriteBytes
    }

    deinit { clear() }

    public var hasPendingWrites: Bool { queueHead < queue.count }
    /// Bytes read and not yet taken as messages.
    public var bufferedReadBytes: Int { readBuffer.count - readStart }

    /// Queues a message. The channel owns `fd` from here on: it is closed
    /// once sent (as OpenBSD's imsg does) or when the buffer is cleared.
    public func compose(_ msg: Imsg) throws {
        let len = ImsgWire.headerSize + msg.data.count
        do {
            guard len <= ImsgWire.maxMessageSize else { throw ImsgError.tooLarge(len) }
            guard pendingWriteBytes + len <= maxPendingWriteBytes else {
                throw ImsgError.queueFull(pendingWriteBytes)
            }
        } catch {
            if let fd = msg.fd { FD.close(fd) }
            throw error
        }
        msg.data.withUnsafeBytes { payload in
            enqueue(type: msg.type, flags: msg.flags, peerID: msg.peerID, pid: msg.pid, payload: payload, fd: msg.fd)
        }
    }

    /// Appends one message (header and payload, as `Imsg.encoded()` lays
    /// them out) to the write queue. One without a descriptor joins the
    /// last queued write while that stays under `maxBytesPerWrite`, as
    /// `flush` would join them anyway: a reply of many messages costs no
    /// array per message (issue 14).
    private func enqueue(type: UInt32, flags: UInt16, peerID: UInt32, pid: UInt32,
                         payload: UnsafeRawBufferPointer, fd: Int32?) {
        let len = ImsgWire.headerSize + payload.count
        func write(_ out: inout [UInt8]) {
            ImsgWire.appendHeader(type: type, length: UInt16(len), flags: flags, peerID: peerID, pid: pid,
                                  hasFD: fd != nil, to: &out)
            out.append(contentsOf: payload)
        }
        if fd == nil, queueHead < queue.count, queue[queue.count - 1].bytes.count + len <= Self.maxBytesPerWrite {
            write(&queue[queue.count - 1].bytes)
        } else {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(fd == nil ? Swift.max(len, 1024) : len)
            write(&bytes)
            queue.append((bytes, fd, 0))
        }
        pendingWriteBytes += len
    }

    public func compose(type: UInt32, peerID: UInt32 = 0, pid: UInt32 = 0,
                        fd: Int32? = nil, data: [UInt8] = []) throws {
        try compose(Imsg(type: type, peerID: peerID, pid: pid, data: data, fd: fd))
    }

    /// Writes what it can. Returns true when the queue is empty, false when
    /// the socket would block (call again when writable).
    @discardableResult
    public func flush() throws -> Bool {
        while queueHead < queue.count {
            let head = queue[queueHead]
            let sendFD: Int32 = head.offset == 0 ? (head.fd ?? -1) : -1
            // The messages after it that carry no descriptor go in the same
            // sendmsg (as msgbuf_write's writev does): a reply of many
            // messages is one write and one wake-up of the reader.
            var last = queueHead
            var total = head.bytes.count - head.offset
            while last + 1 < queue.count, queue[last + 1].fd == nil,
                  total + queue[last + 1].bytes.count <= Self.maxBytesPerWrite {
                last += 1
                total += queue[last].bytes.count
            }
            let n: Int
            if last == queueHead {
                n = head.bytes.withUnsafeBytes { p in
                    cvmd_send_with_fd(fd, p.baseAddress! + head.offset, p.count - head.offset, sendFD)
                }
            } else {
                var joined: [UInt8] = []
                joined.reserveCapacity(total)
                joined += head.bytes[head.offset...]
                for i in (queueHead + 1)...last { joined += queue[i].bytes }
                n = joined.withUnsafeBytes { p in cvmd_send_with_fd(fd, p.baseAddress!, p.count, sendFD) }
            }
            if n < 0 {
                let e = cvmd_errno()
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { return false }
                throw ImsgError.system(SystemError("sendmsg", code: e))
            }
            if sendFD >= 0 {
                // The kernel holds its own reference now.
                FD.close(sendFD)
                queue[queueHead].fd = nil
            }
            pendingWriteBytes -= n
            var left = n
            while left > 0 {
                let unsent = queue[queueHead].bytes.count - queue[queueHead].offset
                if left < unsent {
                    queue[queueHead].offset += left
                    break
                }
                left -= unsent
                queue[queueHead] = ([], nil, 0)
                queueHead += 1
            }
            if queueHead == queue.count {
                queue.removeAll(keepingCapacity: queue.count <= 64)
                queueHead = 0
            } else if queueHead >= 1024 && queueHead * 2 >= queue.count {
                queue.removeFirst(queueHead)
                queueHead = 0
            }
        }
        return true
    }

    /// At most this many bytes of joined messages per sendmsg.
    static let maxBytesPerWrite = 64 << 10

    public enum ReadResult: Equatable { case bytes(Int), endOfFile, wouldBlock }

    /// One recvmsg into the buffer; descriptors that came with it are queued
    /// for the messages flagged IMSGF_HASFD, in order.
    public func read() throws -> ReadResult {
        var tmp = [UInt8](repeating: 0, count: 65536)
        var rfd: Int32 = -1
        var truncated: Int32 = 0
        let n: Int = tmp.withUnsafeMutableBytes { p in
            while true {
                let r = cvmd_recv_with_fd(fd, p.baseAddress, p.count, &rfd, &truncated)
                if r < 0 && cvmd_errno() == EINTR { continue }
                return r
            }
        }
        if n < 0 {
            let e = cvmd_errno()
            if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
            throw ImsgError.system(SystemError("recvmsg", code: e))
        }
        if rfd >= 0 { receivedFDs.append(rfd) }
        if n == 0 {
            sawEndOfFile = true
            let buffered = readBuffer.count - readStart
            if buffered > 0 { throw ImsgError.endOfFileInMessage(buffered: buffered) }
            return .endOfFile
        }
        if readStart > 0 && readStart == readBuffer.count {
            readBuffer.removeAll(keepingCapacity: true)
            readStart = 0
        }
        readBuffer.append(contentsOf: tmp[0..<n])
        return .bytes(n)
    }

    /// The next complete message, or nil when more bytes are needed.
    /// A bad length is an error: the caller must drop the connection.
    public func get() throws -> Imsg? {
        let header: ImsgFraming.Header
        let payload: Range<Int>
        switch ImsgFraming.next(in: readBuffer, from: readStart) {
        case .needMore: return nil
        case .badLength(let n): throw ImsgError.badLength(n)
        case .message(let h, let p): (header, payload) = (h, p)
        }
        let data = Array(readBuffer[payload])
        let fd = consume(header)
        return Imsg(type: header.type, flags: header.flags, peerID: header.peerID, pid: header.pid,
                    data: data, fd: fd)
    }

    /// Takes the message with `header` (the next one) out of the read
    /// buffer; returns its descriptor, if it came with one.
    private func consume(_ header: ImsgFraming.Header) -> Int32? {
        readStart += header.length
        if readStart == readBuffer.count {
            readBuffer.removeAll(keepingCapacity: true)
            readStart = 0
        } else if readStart > 65536 {
            readBuffer.removeFirst(readStart)
            readStart = 0
        }
        if header.flags & ImsgWire.hasFDFlag != 0, !receivedFDs.isEmpty {
            return receivedFDs.removeFirst()
        }
        return nil
    }

    /// The next whole message's header, leaving the message in the buffer
    /// (then `get`, `skip` or `relay(to:peerID:)` takes it); nil until one
    /// has been read whole.
    public func peek() throws -> ImsgFraming.Header? {
        switch ImsgFraming.next(in: readBuffer, from: readStart) {
        case .needMore: return nil
        case .badLength(let n): throw ImsgError.badLength(n)
        case .message(let h, _): return h
        }
    }

    /// Drops the next whole message (closing its descriptor, if any).
    public func skip() throws {
        guard let h = try peek() else { return }
        if let fd = consume(h) { FD.close(fd) }
    }

    /// Moves the next whole message to `out`'s write queue as bytes, with
    /// `peerID` in its header instead: no decoding into an `Imsg`, no array
    /// for its payload (control relays the parent's replies this way). A
    /// message that came with a descriptor is not relayed: it is dropped
    /// and its descriptor closed, and `relay` throws. Throws `queueFull`
    /// when `out` holds too much already (the message is dropped).
    public func relay(to out: ImsgBuffer, peerID: UInt32) throws {
        guard case .message(let h, let payload) = ImsgFraming.next(in: readBuffer, from: readStart) else {
            return
        }
        guard h.flags & ImsgWire.hasFDFlag == 0 else {
            try skip()
            throw ImsgError.descriptorNotRelayed(type: h.type)
        }
        guard out.pendingWriteBytes + h.length <= out.maxPendingWriteBytes else {
            _ = consume(h)
            throw ImsgError.queueFull(out.pendingWriteBytes)
        }
        readBuffer.withUnsafeBytes { all in
            out.enqueue(type: h.type, flags: h.flags, peerID: peerID, pid: h.pid,
                        payload: UnsafeRawBufferPointer(rebasing: all[payload]), fd: nil)
        }
        _ = consume(h)
    }

    /// Blocks until one whole message arrives (blocking sockets; the vCPU
    /// side of a device's sync channel). Throws `.closed` at a clean EOF.
    public func readMessage() throws -> Imsg {
        while true {
            if let m = try get() { return m }
            switch try read() {
            case .bytes: continue
            case .endOfFile: throw ImsgError.closed
            case .wouldBlock:
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&pfd, 1, -1)
            }
        }
    }

    /// Sends one message and waits until it is fully written.
    public func sendBlocking(_ msg: Imsg) throws {
        try compose(msg)
        while try !flush() {
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&pfd, 1, -1)
        }
    }

    /// Drops queued output and closes every descriptor still owned.
    public func clear() {
        for q in queue[queueHead...] { if let f = q.fd { FD.close(f) } }
        queue.removeAll()
        queueHead = 0
        pendingWriteBytes = 0
        for f in receivedFDs { FD.close(f) }
        receivedFDs.removeAll()
        readBuffer.removeAll()
        readStart = 0
    }
}
