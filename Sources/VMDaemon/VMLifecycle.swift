import VMDControl

/// The life of one VM as the parent tracks it: the states vmctl shows and
/// what each event from vmm or a client does to them. Pure: the VM table
/// performs what it decides.
struct VMLifecycle: Equatable {
    /// A guest that reboots this often within the window is stopped (vmd's rule).
    static let restartLimit = 3
    static let restartWindow = 6.0

    private(set) var state: VMState = .stopped
    /// A stop was asked for: a reboot then ends the VM instead of restarting it.
    private(set) var stopRequested = false
    private(set) var restarts: [Double] = []

    /// Launch handed to vmm (or waiting for taps).
    mutating func launching() {
        state = .starting
        stopRequested = false
    }

    /// The launch was refused before any process existed.
    mutating func refused() {
        state = .stopped
    }

    /// The VM process reports its guest runs. Returns whether a stop asked
    /// for while it was starting must now be sent.
    mutating func started() -> Bool {
        if state == .starting { state = .running }
        return stopRequested
    }

    enum StopAction: Equatable {
        /// Nothing to stop.
        case none
        /// Still assembling the launch (no VM process yet): stop once started.
        case deferred
        /// Send the stop to the VM process.
        case send
    }

    /// A client or the daemon asks the VM to stop. `processExists`: vmm has
    /// a VM process for it (the start report may not have come yet).
    mutating func stop(processExists: Bool) -> StopAction {
        switch state {
        case .stopped:
            return .none
        case .starting where !processExists:
            stopRequested = true
            return .deferred
        default:
            stopRequested = true
            state = .stopping
            return .send
        }
    }

    mutating func paused(_ isPaused: Bool) {
        state = isPaused ? .paused : .running
    }

    enum ExitOutcome: Equatable {
        /// Start it again (the guest rebooted).
        case restart
        /// It rebooted too often: stopped.
        case restartLimitReached
        case stopped
    }

    /// The VM process is gone, for `reason`, at monotonic time `now`.
    mutating func exited(_ reason: VMStopReason, now: Double) -> ExitOutcome {
        state = .stopped
        if reason == .reboot && !stopRequested {
            restarts = restarts.filter { now - $0 < Self.restartWindow } + [now]
            if restarts.count >= Self.restartLimit {
                restarts = []
                stopRequested = false
                return .restartLimitReached
            }
            return .restart
        }
        stopRequested = false
        return .stopped
    }
}
