// Interrupt state kept outside the device's transport object: in a device
// process it is a page of memory shared with the VM process, so the VM
// process answers the guest's ISR read itself (read-to-clear, no round trip
// to the device), and the device raises interrupts by writing eventfds that
// KVM turns into interrupts (irqfd) without waking the VM process.

/// What a transport needs from shared interrupt state. Implementations are
/// atomic with respect to the other process touching the same state.
public protocol SharedInterruptState: AnyObject {
    /// ORs `bits` into the ISR and raises the INTx line if it was clear.
    func raiseISR(_ bits: UInt8)
    /// The ISR bits, cleared (a read by the driver, or a reset).
    func readAndClearISR() -> UInt8
    /// Clears `bits` of the ISR (virtio-mmio InterruptACK).
    func acknowledgeISR(_ bits: UInt8)
    /// The ISR bits, left as they are.
    var isrBits: UInt8 { get }
    /// MSI-X vectors this device has (0: no MSI-X, INTx only).
    var msixVectorCount: Int { get }
    /// The driver enabled MSI-X in the PCI capability: interrupts go to
    /// vectors, never to INTx or the ISR.
    var msixEnabled: Bool { get }
    /// Sends vector `vector`, or leaves it pending while it is masked.
    func fire(vector: Int)
}

extension TransportCore {
    /// Interrupt state shared with another process (nil: local ISR, and
    /// the sink is told each change of the INTx level).
    public var sharedInterrupts: SharedInterruptState? {
        get { interrupts.shared }
        set { interrupts.shared = newValue }
    }
}
