import Glibc
import VMDSystem

/// The run state all vCPU threads share: running, paused or stopping.
final class RunState: VCPUControl {
    enum Mode { case running, paused, stopping }

    private let lock = Mutex()
    private let changed = Condition()
    private var mode = Mode.running
    private var parked = 0
    private var live = 0
    private var exitReported = false
    private var logLine: (String) -> Void = { Log.info($0) }
    /// Set once, before any vCPU thread starts.
    var vcpus: [VCPU] = []
    var onExit: ((VMExitReason) -> Void)?
    private(set) var ioBus = Bus(name: "io", log: { Log.info($0) })
    private(set) var mmioBus = Bus(name: "mmio", log: { Log.info($0) })

    func attach(ioBus: Bus, mmioBus: Bus, log: @escaping (String) -> Void) {
        self.ioBus = ioBus
        self.mmioBus = mmioBus
        logLine = log
    }

    func log(_ message: String) { logLine(message) }

    var isPaused: Bool { lock.locked { mode == .paused && parked == live } }

    func threadStarted() { lock.locked { live += 1 } }
    /// Kicks read `vcpu.thread` under the same lock.
    func record(_ thread: pthread_t, for vcpu: VCPU) {
        lock.locked {
            vcpu.thread = thread
            // A kick that came before the thread id was known: deliver it now.
            if mode != .running { vcpu.kvm.setImmediateExit(true); Threads.wake(thread) }
        }
    }
    func threadEnded() {
        lock.locked {
            live -= 1
            changed.broadcast()
        }
    }

    func checkpoint(_ vcpu: VCPU) -> Bool {
        lock.locked {
            while mode == .paused {
                parked += 1
                changed.broadcast()
                changed.wait(lock)
                parked -= 1
            }
            if mode == .stopping { return false }
            // Cleared only while running and under the lock, so a pause that sets
            // it after this point still stops the next KVM_RUN at once.
            vcpu.kvm.setImmediateExit(false)
            return true
        }
    }

    /// Makes every vCPU leave KVM_RUN soon (lock held).
    private func kickAll() {
        for vcpu in vcpus {
            vcpu.kvm.setImmediateExit(true)
            if let thread = vcpu.thread { Threads.wake(thread) }
        }
    }

    func pause() {
        lock.locked {
            guard mode == .running else { return }
            mode = .paused
            kickAll()
            while mode == .paused && parked < live { changed.wait(lock) }
        }
    }

    func unpause() {
        lock.locked {
            guard mode == .paused else { return }
            mode = .running
            changed.broadcast()
        }
    }

    func stop() {
        lock.locked {
            guard mode != .stopping else { return }
            mode = .stopping
            kickAll()
            changed.broadcast()
        }
    }

    /// Waits until every vCPU thread has ended, at most `seconds`; false
    /// when some are still running (blocked outside KVM_RUN).
    func waitForThreads(seconds: Double) -> Bool {
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        let whole = seconds.rounded(.down)
        deadline.tv_sec += Int(whole)
        deadline.tv_nsec += Int((seconds - whole) * 1e9)
        if deadline.tv_nsec >= 1_000_000_000 { deadline.tv_sec += 1; deadline.tv_nsec -= 1_000_000_000 }
        return lock.locked {
            while live > 0 {
                var now = timespec()
                clock_gettime(CLOCK_REALTIME, &now)
                if now.tv_sec > deadline.tv_sec || (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec) {
                    return false
                }
                changed.wait(lock, until: deadline)
            }
            return true
        }
    }

    func requestExit(_ reason: VMExitReason) {
        let report: ((VMExitReason) -> Void)? = lock.locked {
            guard !exitReported else { return nil }
            exitReported = true
            if mode != .stopping {
                mode = .stopping
                kickAll()
                changed.broadcast()
            }
            return onExit
        }
        report?(reason)
    }
}
