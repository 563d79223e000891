import Glibc
import VMDSystem

/// An imsg connection driven by an event loop: `onMessage` for each message,
/// `onClose` once, with the reason when the peer misbehaved. A peer that
/// sends a bad length or stops mid-message is disconnected, never trusted.
public final class ImsgChannel {
    public let name: String
    public let buffer: ImsgBuffer
    private unowned let loop: EventLoop
    private var readHandle: EventHandle?
    private var writeHandle: EventHandle?
    private var onMessage: (ImsgChannel, Imsg) -> Void
    private var onClose: (ImsgChannel, String?) -> Void
    public private(set) var isClosed = false
    /// Arbitrary per-connection state for the owner (e.g. peer credentials).
    public var context: AnyObject?
    /// The message types this peer may send (VMDControl's MessagePolicy);
    /// others are logged and dropped, never delivered. nil accepts all.
    public var allowedTypes: Set<UInt32>? {
        didSet { allowedMask = allowedTypes.map(TypeMask.init) }
    }
    /// `allowedTypes` as a bit per type below 512 (every type vmd uses):
    /// checked for each message without hashing.
    private var allowedMask: TypeMask?
    /// Looks at each message that came without a descriptor before it is
    /// copied out of the read buffer (after the `allowedTypes` check), and
    /// says what becomes of it: `.relay` moves its bytes to another
    /// channel's write queue with a new peerID (control relays the parent's
    /// replies so, issue 14), `.drop` discards it, `.deliver` gives it to
    /// `onMessage` as usual. nil: every message goes to `onMessage`.
    public var onFrame: ((ImsgFraming.Header) -> FrameAction)?
    public enum FrameAction {
        case deliver, drop
        case relay(to: ImsgChannel, peerID: UInt32)
    }
    /// Disconnect (instead of dropping the message) on a type not allowed:
    /// for untrusted peers such as control clients.
    public var closeOnRefusedType = false
    /// Stop reading from the peer while more than this many bytes wait to
    /// be written to it (its requests wait until it takes its replies);
    /// reading resumes below half of it. nil: always read.
    public var pauseReadingAbove: Int? { didSet { updateReading() } }
    /// The owner's own reason to stop reading (e.g. too many requests in
    /// flight for this peer).
    public var holdReading = false { didSet { updateReading() } }
    /// Past this many queued bytes the peer is dropped (`buffer`'s limit).
    public var maxQueuedBytes: Int {
        get { buffer.maxPendingWriteBytes }
        set { buffer.maxPendingWriteBytes = newValue }
    }
    public var isReadingPaused: Bool { readHandle == nil && !isClosed }
    private var drainPaused = false

    public var fd: Int32 { buffer.fd }

    public convenience init(fd: Int32, name: String, loop: EventLoop,
                            onMessage: @escaping (ImsgChannel, Imsg) -> Void,
                            onClose: @escaping (ImsgChannel, String?) -> Void) {
        self.init(buffer: ImsgBuffer(fd: fd), name: name, loop: loop, onMessage: onMessage, onClose: onClose)
    }

    /// Takes over a buffer that was used in blocking mode first (e.g. to
    /// read a start-up message); whatever it already holds is delivered.
    public init(buffer: ImsgBuffer, name: String, loop: EventLoop,
                onMessage: @escaping (ImsgChannel, Imsg) -> Void,
                onClose: @escaping (ImsgChannel, String?) -> Void) {
        self.name = name
        self.loop = loop
        self.onMessage = onMessage
        self.onClose = onClose
        self.buffer = buffer
        try? FD.setNonBlocking(buffer.fd)
        readHandle = loop.onReadable(buffer.fd) { [weak self] in self?.readable() }
        loop.after(seconds: 0) { [weak self] in self?.deliverBuffered() }
    }

    private func deliverBuffered() {
        do {
            while canDeliver, try deliverNext() {}
        } catch {
            close(reason: "\(error)")
        }
    }

    /// Queues a message and writes as much as the socket takes now.
    public func send(_ msg: Imsg) {
        guard !isClosed else {
            if let f = msg.fd { FD.close(f) }
            return
        }
        do {
            try buffer.compose(msg)
        } catch ImsgError.queueFull(let n) {
            close(reason: "peer does not read: \(n) bytes queued for it")
            return
        } catch {
            Log.warning("\(name): dropped outgoing message type \(msg.type): \(error)")
            return
        }
        flush()
    }

    private var canDeliver: Bool { !isClosed && !holdReading && !drainPaused }

    /// Starts or stops watching the socket for reads as the limits say.
    private func updateReading() {
        guard !isClosed else { return }
        if let limit = pauseReadingAbove {
            if buffer.pendingWriteBytes > limit { drainPaused = true }
            else if buffer.pendingWriteBytes <= limit / 2 { drainPaused = false }
        } else {
            drainPaused = false
        }
        let want = !holdReading && !drainPaused
        if want && readHandle == nil {
            readHandle = loop.onReadable(buffer.fd) { [weak self] in self?.readable() }
            // Messages read before the pause are still in the buffer.
            loop.after(seconds: 0) { [weak self] in self?.deliverBuffered() }
        } else if !want, let r = readHandle {
            loop.remove(r)
            readHandle = nil
        }
    }

    /// Queues several messages and writes them together: one write (and
    /// one wake-up of the peer) for a whole answer, e.g. a status table.
    public func send(_ msgs: [Imsg]) {
        for (i, m) in msgs.enumerated() {
            guard !isClosed else {
                for rest in msgs[i...] { if let f = rest.fd { FD.close(f) } }
                return
            }
            compose(m)
        }
        flush()
    }

    /// Queues a message and writes it, with whatever else was queued this
    /// way, once the event loop has run the current callback: messages
    /// relayed one by one from a batch that was read at once leave in one
    /// write.
    public func sendSoon(_ msg: Imsg) {
        guard !isClosed else {
            if let f = msg.fd { FD.close(f) }
            return
        }
        compose(msg)
        scheduleFlush()
    }

    private func scheduleFlush() {
        guard flushSoon == nil, !isClosed else { return }
        flushSoon = loop.after(seconds: 0) { [weak self] in
            self?.flushSoon = nil
            self?.flush()
        }
    }
    private var flushSoon: EventHandle?

    private func compose(_ msg: Imsg) {
        do {
            try buffer.compose(msg)
        } catch ImsgError.queueFull(let n) {
            close(reason: "peer does not read: \(n) bytes queued for it")
        } catch {
            Log.warning("\(name): dropped outgoing message type \(msg.type): \(error)")
        }
    }

    public func send(type: UInt32, peerID: UInt32 = 0, pid: UInt32 = 0,
                     fd: Int32? = nil, data: [UInt8] = []) {
        send(Imsg(type: type, peerID: peerID, pid: pid, data: data, fd: fd))
    }

    private func flush() {
        do {
            if try !buffer.flush(), writeHandle == nil {
                writeHandle = loop.onceWritable(fd) { [weak self] in
                    self?.writeHandle = nil
                    self?.flush()
                }
            }
        } catch {
            close(reason: "\(error)")
            return
        }
        if pauseReadingAbove != nil { updateReading() }
    }

    private func readable() {
        do {
            let r = try buffer.read()
            while canDeliver, try deliverNext() {}
            if r == .endOfFile { close(reason: nil) }
        } catch {
            close(reason: "\(error)")
        }
    }

    /// Handles the next whole message; false when there is none yet.
    private func deliverNext() throws -> Bool {
        if let onFrame {
            guard let h = try buffer.peek() else { return false }
            if h.flags & ImsgWire.hasFDFlag == 0 {
                guard accepts(h.type) else {
                    try buffer.skip()
                    refuse(h.type)
                    return true
                }
                switch onFrame(h) {
                case .deliver: break
                case .drop:
                    try buffer.skip()
                    return true
                case .relay(let target, let peerID):
                    target.relaySoon(from: buffer, peerID: peerID)
                    return true
                }
            }
        }
        guard let m = try buffer.get() else { return false }
        deliver(m)
        return true
    }

    private func accepts(_ type: UInt32) -> Bool {
        guard let mask = allowedMask else { return true }
        return mask.contains(type)
    }

    private func refuse(_ type: UInt32) {
        if closeOnRefusedType {
            close(reason: "message type \(type) is not accepted from this peer")
        } else {
            Log.warning("\(name): dropped message type \(type): not accepted from this peer")
        }
    }

    private func deliver(_ m: Imsg) {
        if !accepts(m.type) {
            if let f = m.fd { FD.close(f) }
            refuse(m.type)
            return
        }
        onMessage(self, m)
    }

    /// `sendSoon` for the next message in `source` (another channel's read
    /// buffer), moved as bytes with `peerID` in its header.
    private func relaySoon(from source: ImsgBuffer, peerID: UInt32) {
        guard !isClosed else {
            try? source.skip()
            return
        }
        do {
            try source.relay(to: buffer, peerID: peerID)
        } catch ImsgError.queueFull(let n) {
            close(reason: "peer does not read: \(n) bytes queued for it")
            return
        } catch {
            Log.warning("\(name): dropped a relayed message: \(error)")
            return
        }
        scheduleFlush()
    }

    /// Closes the connection once; undelivered descriptors are closed too.
    public func close(reason: String?) {
        guard !isClosed else { return }
        isClosed = true
        if let r = readHandle { loop.remove(r) }
        if let w = writeHandle { loop.remove(w) }
        if let f = flushSoon { loop.remove(f) }
        readHandle = nil
        writeHandle = nil
        flushSoon = nil
        if let reason { Log.warning("\(name): closing connection: \(reason)") }
        buffer.clear()
        FD.close(buffer.fd)
        let cb = onClose
        onClose = { _, _ in }
        onMessage = { _, _ in }
        cb(self, reason)
    }
}

/// A set of imsg types as a bit per type below 512, with the rest (none in
/// vmd today) in a Set: a membership test per message costs no hashing.
struct TypeMask {
    private var bits = [UInt64](repeating: 0, count: 8)
    private var others: Set<UInt32> = []

    init(_ types: Set<UInt32>) {
        for t in types {
            if t < 512 { bits[Int(t >> 6)] |= 1 << UInt64(t & 63) } else { others.insert(t) }
        }
    }

    func contains(_ t: UInt32) -> Bool {
        t < 512 ? bits[Int(t >> 6)] & (1 << UInt64(t & 63)) != 0 : others.contains(t)
    }
}
