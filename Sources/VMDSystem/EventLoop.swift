import Glibc
import CVMDSys

/// A libevent `event_base` with closure callbacks: every daemon process runs
/// one for its channels, signals and timers. Not thread-safe: only the
/// process's main thread touches it.
public final class EventLoop {
    public let base: UnsafeMutableRawPointer
    private var handlers: [ObjectIdentifier: EventHandle] = [:]

    public init() {
        base = cvmd_event_base_new()!
    }

    deinit {
        for h in handlers.values { h.free() }
        cvmd_event_base_free(base)
    }

    /// Runs until `exit()` or until no events remain.
    public func run() {
        _ = cvmd_event_base_dispatch(base)
    }

    public func exit() {
        exitRequested = true
        _ = cvmd_event_base_loopbreak(base)
    }

    /// Set by `exit()`: a caller driving the loop with `runOnce` stops.
    public private(set) var exitRequested = false
    /// How many callbacks have run: a caller polling between passes sees
    /// whether a pass did anything.
    public private(set) var callbacksRun: UInt64 = 0

    /// One pass: waits for events (`block`) or only takes those already
    /// pending, and runs their callbacks. False when the loop should stop
    /// (`exit()` was called, no events are left, or the wait failed).
    @discardableResult
    public func runOnce(block: Bool) -> Bool {
        guard !exitRequested else { return false }
        let r = cvmd_event_base_loop_once(base, block ? 1 : 0)
        return r == 0 && !exitRequested
    }

    /// Calls `body` whenever `fd` is readable, until the handle is removed.
    @discardableResult
    public func onReadable(_ fd: Int32, _ body: @escaping () -> Void) -> EventHandle {
        add(fd: fd, what: Int16(CVMD_EV_READ | CVMD_EV_PERSIST), timeout: nil, body)
    }

    /// Calls `body` once when `fd` becomes writable.
    @discardableResult
    public func onceWritable(_ fd: Int32, _ body: @escaping () -> Void) -> EventHandle {
        add(fd: fd, what: Int16(CVMD_EV_WRITE), timeout: nil, body)
    }

    /// Delivers `signal` through the loop (libevent's self-pipe), never in
    /// async-signal context.
    @discardableResult
    public func onSignal(_ signal: Int32, _ body: @escaping () -> Void) -> EventHandle {
        add(fd: signal, what: Int16(CVMD_EV_SIGNAL | CVMD_EV_PERSIST), timeout: nil, body)
    }

    /// One-shot timer.
    @discardableResult
    public func after(seconds: Double, _ body: @escaping () -> Void) -> EventHandle {
        add(fd: -1, what: 0, timeout: seconds, body)
    }

    /// Periodic timer.
    @discardableResult
    public func every(seconds: Double, _ body: @escaping () -> Void) -> EventHandle {
        add(fd: -1, what: Int16(CVMD_EV_PERSIST), timeout: seconds, body)
    }

    public func remove(_ h: EventHandle) {
        h.free()
        handlers[ObjectIdentifier(h)] = nil
    }

    private func add(fd: Int32, what: Int16, timeout: Double?,
                     _ body: @escaping () -> Void) -> EventHandle {
        let h = EventHandle(loop: self, body: body, oneShot: what & Int16(CVMD_EV_PERSIST) == 0)
        let arg = Unmanaged.passUnretained(h).toOpaque()
        h.event = cvmd_event_new(base, fd, what, { _, _, arg in
            let h = Unmanaged<EventHandle>.fromOpaque(arg!).takeUnretainedValue()
            h.loop.callbacksRun &+= 1
            h.fire()
        }, arg)
        _ = cvmd_event_add(h.event, timeout ?? -1)
        handlers[ObjectIdentifier(h)] = h
        return h
    }

    fileprivate func retire(_ h: EventHandle) {
        handlers[ObjectIdentifier(h)] = nil
    }
}

public final class EventHandle {
    fileprivate var event: UnsafeMutableRawPointer?
    /// Unowned, not weak: a handle fires only from its loop's dispatch, and
    /// a weakly referenced object pays Swift's slow side-table reference
    /// counting on every retain, which a polling device process does on
    /// its loop hundreds of thousands of times a second.
    fileprivate unowned let loop: EventLoop
    private let body: () -> Void
    private let oneShot: Bool

    fileprivate init(loop: EventLoop, body: @escaping () -> Void, oneShot: Bool) {
        self.loop = loop
        self.body = body
        self.oneShot = oneShot
    }

    fileprivate func fire() {
        // Keep self alive through the callback even if it removes itself.
        let keep = self
        body()
        if oneShot {
            keep.free()
            loop.retire(keep)
        }
    }

    fileprivate func free() {
        if let e = event {
            cvmd_event_free(e)
            event = nil
        }
    }
}
