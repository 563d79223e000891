// What the two transports (virtio 1.x and legacy 0.9) share: the ISR bits
// with the INTx line they drive, and running a device's work on a queue.

/// ISR causes and the level-triggered line: high while any cause is
/// pending; reading (and so clearing) the ISR lowers it.
final class InterruptState {
    weak var sink: InterruptSink?
    private(set) var isr: UInt8 = 0
    private(set) var asserted = false

    init(sink: InterruptSink?) {
        self.sink = sink
    }

    func raise(_ bits: UInt8) {
        isr |= bits
        setLine(true)
    }

    /// The driver read the ISR (or the device was reset).
    func readAndClear() -> UInt8 {
        let value = isr
        isr = 0
        setLine(false)
        return value
    }

    private func setLine(_ level: Bool) {
        guard level != asserted else { return }
        asserted = level
        sink?.setInterrupt(level)
    }
}

/// Runs `body` on queue `index` if it is live, then raises the queue
/// interrupt if the driver wants one. A ring error fails the device, after
/// reporting whatever was completed before it.
func runQueue(_ queues: [Virtqueue], _ index: Int, ready: Bool, interrupts: InterruptState,
              fail: (String) -> Void, _ body: (Virtqueue) throws -> Void) {
    guard index >= 0, index < queues.count, ready, queues[index].isEnabled else { return }
    let queue = queues[index]
    do {
        try body(queue)
        if try queue.needsInterrupt() { interrupts.raise(VirtioISR.queue) }
    } catch {
        if (try? queue.needsInterrupt()) == true { interrupts.raise(VirtioISR.queue) }
        fail("queue \(index): \(error)")
    }
}
