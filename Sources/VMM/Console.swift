import VMDSystem
/// Bounded history of console output, so early boot output is not lost when
/// nobody is attached to the pty. Keeps the newest `capacity` bytes.
final class ConsoleRing {
    let capacity: Int
    private var storage: [UInt8]
    private var start = 0
    private var count = 0
    private let lock = Mutex()

    init(capacity: Int = 64 * 1024) {
        self.capacity = max(capacity, 1)
        storage = [UInt8](repeating: 0, count: self.capacity)
    }

    func append(_ bytes: [UInt8]) {
        lock.locked {
            for byte in bytes.suffix(capacity) {
                let index = (start + count) % capacity
                storage[index] = byte
                if count < capacity { count += 1 } else { start = (start + 1) % capacity }
            }
        }
    }

    func snapshot() -> [UInt8] {
        lock.locked {
            (0..<count).map { storage[(start + $0) % capacity] }
        }
    }
}

/// The console: COM1's output goes to the ring and to the pty master, never
/// blocking the vCPU (a full pty drops bytes for the pty, the ring keeps them).
final class Console {
    let ring: ConsoleRing
    let masterFD: Int32
    let slaveFD: Int32
    let slaveName: String
    /// Extra observer of output (tests, a future log file); called on vCPU threads.
    var tap: (([UInt8]) -> Void)?

    init(pty: (master: Int32, slave: Int32, name: String), ringCapacity: Int) {
        ring = ConsoleRing(capacity: ringCapacity)
        masterFD = pty.master
        slaveFD = pty.slave
        slaveName = pty.name
    }

    func output(_ bytes: [UInt8]) {
        ring.append(bytes)
        bytes.withUnsafeBytes { _ = FD.writeNonBlocking(masterFD, $0) }
        tap?(bytes)
    }

    func close() {
        FD.close(masterFD)
        FD.close(slaveFD)
    }
}
