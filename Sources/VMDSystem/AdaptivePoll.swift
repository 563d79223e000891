import Glibc

/// How long a device process spins on its queues before it sleeps, adapted
/// to what the last waits were (the scheme of QEMU's AioContext polling,
/// util/aio-posix.c, and of KVM's halt polling).
///
/// Why: a sleeping process is woken by the guest's kick through the
/// scheduler, and on a host whose idle CPUs halt (every virtual machine
/// without guest halt polling, such as these nested hosts) that wake-up
/// costs 15-30 us: more than the request itself. A process that is still
/// spinning when the next request arrives sees it at once.
///
/// The window grows (4 us, then doubling, up to `maxNanos`) while the waits
/// end within `maxNanos`, and halves when a wait is longer (an idle or slow
/// guest: no CPU is burnt on it). It is closed for a while when the process
/// was preempted while it spun (an involuntary context switch: another task
/// of this host wanted that CPU): 1 ms for a preemption now and then, and
/// twice as long each time another comes within 10 ms of reopening, up to
/// 50 ms, so on a loaded host, where polling takes the CPU from others, it
/// polls at most ~0.2% of the time. The back-off stays short because a
/// lone preemption is common on a quiet host too (a kernel worker, the
/// device's own io_uring workers). Time stolen by a hypervisor under this
/// host is not counted: not polling would not give it back.
/// Pure state: the caller measures; `AdaptivePollTests` drives it.
public struct AdaptivePollWindow: Equatable {
    public static let growStart = 4_000

    public static let firstBackoff = 1_000_000
    public static let longestBackoff = 50_000_000
    /// A preemption this soon after the window reopened lengthens the back-off.
    public static let repeatWithin = 10_000_000

    public let maxNanos: Int
    public private(set) var nanos = 0
    public private(set) var closedUntil = 0
    public private(set) var backoff = AdaptivePollWindow.firstBackoff
    /// Windows closed because this process was preempted while polling.
    public private(set) var contended = 0

    public init(maxNanos: Int) {
        self.maxNanos = max(0, maxNanos)
    }

    /// The window to poll for now (0: sleep at once).
    public func window(now: Int) -> Int {
        now < closedUntil ? 0 : nanos
    }

    /// A wait ended `waited` ns after it began (polling and sleeping).
    public mutating func waitEnded(after waited: Int) {
        if waited <= nanos { return }            // polling caught it
        if waited > maxNanos {                   // too long to poll for
            nanos /= 2
            if nanos < Self.growStart { nanos = 0 }
            return
        }
        nanos = min(maxNanos, nanos == 0 ? Self.growStart : nanos * 2)
    }

    /// A poll ended at `now`; `preempted`: another task took the CPU from
    /// this thread while it polled.
    public mutating func polled(preempted: Bool, now: Int) {
        guard preempted else { return }
        // Again within 10 ms of the window reopening: the host is still busy.
        if contended > 0, now &- closedUntil < Self.repeatWithin {
            backoff = min(Self.longestBackoff, backoff * 2)
        } else {
            backoff = Self.firstBackoff
        }
        closedUntil = now &+ backoff
        contended &+= 1
    }
}

public enum ThreadUsage {
    /// How many times another task has taken the CPU from this thread
    /// (getrusage RUSAGE_THREAD, ru_nivcsw).
    public static func involuntarySwitches() -> Int {
        var u = rusage()
        // RUSAGE_THREAD (1): glibc declares it only under _GNU_SOURCE.
        guard getrusage(__rusage_who_t(1), &u) == 0 else { return 0 }
        return u.ru_nivcsw
    }
}
