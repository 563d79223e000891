import VMDSystem
/// Something that drives the guest's interrupt controller inputs
/// (KVM_IRQ_LINE on the in-kernel PIC + IOAPIC, or a recorder in tests).
public protocol InterruptController: AnyObject {
    func setIRQ(_ irq: UInt32, level: Bool)
}

/// Wired-OR of the sources sharing each IRQ: PCI slots 1 and 5 both use IRQ 5,
/// and one function deasserting must not lower a line the other still holds.
final class InterruptRouter {
    private let controller: InterruptController
    private let lock = Mutex()
    private var asserted: [UInt32: Set<Int>] = [:]
    private var nextSource = 0

    init(controller: InterruptController) { self.controller = controller }

    /// A new source on `irq`.
    func line(irq: UInt32) -> InterruptLine {
        let source: Int = lock.locked {
            nextSource += 1
            return nextSource
        }
        return InterruptLine(irq: irq, source: source, router: self)
    }

    func set(irq: UInt32, source: Int, level: Bool) {
        lock.locked {
            var sources = asserted[irq] ?? []
            let wasHigh = !sources.isEmpty
            if level { sources.insert(source) } else { sources.remove(source) }
            asserted[irq] = sources
            // Asserts always reach the controller (a cheap second chance for an
            // edge); a deassert only when the last source let go.
            if level || wasHigh != !sources.isEmpty { controller.setIRQ(irq, level: !sources.isEmpty) }
        }
    }
}

/// One interrupt source of the guest (an ISA device or a PCI function's INTx).
/// Level semantics: asserted until deasserted. Thread-safe.
public final class InterruptLine {
    public let irq: UInt32
    private let source: Int
    private let router: InterruptRouter

    init(irq: UInt32, source: Int, router: InterruptRouter) {
        self.irq = irq
        self.source = source
        self.router = router
    }

    public func assert() { router.set(irq: irq, source: source, level: true) }
    public func deassert() { router.set(irq: irq, source: source, level: false) }
    public func set(_ level: Bool) { router.set(irq: irq, source: source, level: level) }
}
