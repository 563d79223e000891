import Glibc
import CVMDSys
import VMDSystem
import VMM
import Virtio

// Interrupts from a device process straight to KVM.
//
// Each device gets, from the VM process, at spawn (and again at a respawn:
// they are in its DeviceSetup descriptor list):
//   - an interrupt page: one page of memory shared with the VM process
//     holding the ISR bits and the MSI-X control, mask and pending bits;
//   - an INTx irqfd, bound by the VM process to the function's IRQ with
//     KVM_IRQFD in resample mode (level-triggered), and its resamplefd,
//     which KVM signals at the guest's EOI: the device raises the line again
//     if the ISR is still non-zero;
//   - with MSI-X (modern transport), one irqfd per vector, each bound to an
//     MSI GSI whose route the VM process keeps equal to the guest's table.
// The device raises an interrupt by writing an eventfd; the guest's ISR read
// is answered by the VM process from the page (read-to-clear) without a
// round trip. Nothing of this is PCI-specific: a virtio-mmio transport uses
// the same page (InterruptStatus + InterruptACK) and the same INTx irqfd.
//
// INTx costs: a guest that EOIs before it reads the ISR (an 8259 driver that
// masks and acks first, as vmtest's stubs and Linux's handle_level_irq do)
// gets the line raised again by the resample (the ISR is still set) and, once
// it unmasks, one interrupt that finds the ISR clear; a guest that reads the
// ISR before its EOI (IOAPIC fasteoi) does not. Each EOI also wakes the device
// once (resamplefd). MSI-X has none of this: one eventfd write per interrupt.
//
// Where KVM cannot bind an irqfd (KVM_IRQFD fails), the VM process reads the
// INTx eventfd itself and drives the line with KVM_IRQ_LINE (the old path,
// one more process wake-up); the device does not notice the difference.

/// The shared interrupt page: 32-bit words, atomically updated by both
/// processes. Mapped whole by each.
final class InterruptPage {
    static let size = 4096
    static let isrWord = 0
    static let controlWord = 1          // bit 0 MSI-X enabled, bit 1 function mask
    static let maskWords = 2            // 2 words: vector masks
    static let pendingWords = 4         // 2 words: pending vectors
    /// Register writes the VM process has sent on the sync channel (it
    /// counts before sending): a kick needs a look at the sync channel
    /// only when the device has served fewer (DeviceProcess's kick path).
    static let writesSentWord = 8
    static let controlEnabled: UInt32 = 1, controlFunctionMask: UInt32 = 2

    let base: UnsafeMutablePointer<UInt32>

    init(fd: Int32) throws {
        let p = try SharedMemory.map(fd: fd, size: Self.size, what: "interrupt page")
        base = p.bindMemory(to: UInt32.self, capacity: Self.size / 4)
    }

    /// A new page's memfd (VM process).
    static func create() throws -> Int32 { try Memfd.create(name: "vmd-interrupts", size: size) }

    func load(_ w: Int) -> UInt32 { cvmd_atomic_load32(base + w) }
    func or(_ w: Int, _ v: UInt32) -> UInt32 { cvmd_atomic_or32(base + w, v) }
    func and(_ w: Int, _ v: UInt32) -> UInt32 { cvmd_atomic_and32(base + w, v) }
    func exchange(_ w: Int, _ v: UInt32) -> UInt32 { cvmd_atomic_exchange32(base + w, v) }
    func add(_ w: Int, _ v: UInt32) -> UInt32 { cvmd_atomic_add32(base + w, v) }

    var isr: UInt8 { UInt8(truncatingIfNeeded: load(Self.isrWord)) }
    func readAndClearISR() -> UInt8 { UInt8(truncatingIfNeeded: exchange(Self.isrWord, 0)) }

    var msixEnabled: Bool { load(Self.controlWord) & Self.controlEnabled != 0 }

    func vectorMasked(_ v: Int) -> Bool {
        load(Self.controlWord) & Self.controlFunctionMask != 0
            || load(Self.maskWords + v / 32) & (1 << UInt32(v % 32)) != 0
    }

    /// Sets `v`'s pending bit; true if it was clear.
    func setPending(_ v: Int) -> Bool {
        or(Self.pendingWords + v / 32, 1 << UInt32(v % 32)) & (1 << UInt32(v % 32)) == 0
    }

    /// Clears `v`'s pending bit; true if it was set (exactly one caller wins).
    func takePending(_ v: Int) -> Bool {
        let bit: UInt32 = 1 << UInt32(v % 32)
        return and(Self.pendingWords + v / 32, ~bit) & bit != 0
    }
}

extension InterruptPage: MSIXVectorState {
    func setControl(enabled: Bool, functionMask: Bool) {
        _ = exchange(Self.controlWord, (enabled ? Self.controlEnabled : 0) | (functionMask ? Self.controlFunctionMask : 0))
    }

    func setVectorMask(_ v: Int, masked: Bool) {
        let bit: UInt32 = 1 << UInt32(v % 32)
        if masked { _ = or(Self.maskWords + v / 32, bit) } else { _ = and(Self.maskWords + v / 32, ~bit) }
    }

    var pendingBits: UInt64 {
        UInt64(load(Self.pendingWords)) | UInt64(load(Self.pendingWords + 1)) << 32
    }
}

/// The device process's side: raises the INTx line and MSI-X vectors by
/// writing eventfds, with the ISR and the masks in the page.
final class DeviceInterrupts: SharedInterruptState {
    let page: InterruptPage
    let intxFD: Int32
    let resampleFD: Int32
    let vectorFDs: [Int32]

    init(page: InterruptPage, intxFD: Int32, resampleFD: Int32, vectorFDs: [Int32]) {
        self.page = page
        self.intxFD = intxFD
        self.resampleFD = resampleFD
        self.vectorFDs = vectorFDs
    }

    /// From the device's descriptors, if the VM process gave them.
    static func from(_ d: DeviceDescriptors) throws -> DeviceInterrupts? {
        guard let pageFD = d.first(.interruptPage), let intx = d.first(.intxIRQ),
              let resample = d.first(.intxResample) else { return nil }
        let page = try InterruptPage(fd: pageFD)
        FD.close(pageFD)
        return DeviceInterrupts(page: page, intxFD: intx, resampleFD: resample, vectorFDs: d.msixVectors)
    }

    func raiseISR(_ bits: UInt8) {
        // A clear ISR means the line is low or about to be (the guest read
        // it): raise it. Otherwise it is high, or the resample that follows
        // the guest's EOI finds the ISR set and raises it again.
        if page.or(InterruptPage.isrWord, UInt32(bits)) & 0xff == 0 { EventFD.signal(intxFD) }
    }

    func readAndClearISR() -> UInt8 { page.readAndClearISR() }
    var isrBits: UInt8 { page.isr }
    func acknowledgeISR(_ bits: UInt8) { _ = page.and(InterruptPage.isrWord, ~UInt32(bits)) }
    var msixVectorCount: Int { vectorFDs.count }
    var msixEnabled: Bool { !vectorFDs.isEmpty && page.msixEnabled }

    func fire(vector v: Int) {
        guard v >= 0, v < vectorFDs.count else { return }
        // Pending first, then the mask: whoever clears pending (this
        // process, or the VM process unmasking) sends the message once.
        _ = page.setPending(v)
        if !page.vectorMasked(v) && page.takePending(v) { EventFD.signal(vectorFDs[v]) }
    }

    /// Register writes served so far (the sync channel's IO_WRITEs).
    var writesServed: UInt32 = 0

    /// Whether register writes the VM process sent before a kick may still
    /// wait in the sync channel: only then must the kick read it first.
    var writesPending: Bool { page.load(InterruptPage.writesSentWord) != writesServed }

    /// A (re)started device: every write sent before now is in the sync
    /// channel, which its loop reads as soon as it runs.
    func startCountingWrites() { writesServed = page.load(InterruptPage.writesSentWord) }

    /// KVM lowered the INTx line at the guest's EOI: raise it again while
    /// the ISR says an interrupt is still pending (level semantics).
    func resampled() {
        EventFD.drain(resampleFD)
        if page.isr != 0 { EventFD.signal(intxFD) }
    }
}

/// The VM process's side of one device's interrupts: the descriptors it
/// passes, the KVM bindings, the MSI-X table, the ISR read.
final class VMDeviceInterrupts {
    let pageFD: Int32
    let page: InterruptPage
    let intxFD: Int32
    let resampleFD: Int32
    let vectorFDs: [Int32]
    private(set) var msix: MSIXTable?
    /// KVM_IRQFD failed: this process relays the INTx eventfd to the line.
    private(set) var relayed = false
    private var line: InterruptLine?

    /// `vectors` 0: INTx only.
    init(vectors: Int) throws {
        pageFD = try InterruptPage.create()
        page = try InterruptPage(fd: pageFD)
        intxFD = try EventFD.create()
        resampleFD = try EventFD.create()
        vectorFDs = try (0..<vectors).map { _ in try EventFD.create() }
    }

    /// The descriptors, with their roles, to hand to the device process.
    var descriptors: [(fd: Int32, role: DeviceDescriptorRole)] {
        [(pageFD, .interruptPage), (intxFD, .intxIRQ), (resampleFD, .intxResample)]
            + vectorFDs.enumerated().map { ($1, .msixVector($0)) }
    }

    /// Binds the eventfds in KVM, once the function has its IRQ (before
    /// the sandbox: KVM_IRQFD). Without irqfd the INTx eventfd is relayed
    /// through `loop`; MSI-X vectors have no such fallback, so failing to
    /// bind them is an error.
    func connect(vm: VirtualMachine, line: InterruptLine, loop: EventLoop, name: String) throws {
        self.line = line
        do {
            try vm.bindIRQFD(intxFD, gsi: line.irq, resampleFD: resampleFD)
        } catch {
            Log.warning("\(name): \(error): its INTx interrupts go through the VM process")
            relayed = true
            let page = self.page, fd = intxFD
            loop.onReadable(fd) {
                EventFD.drain(fd)
                if page.isr != 0 { line.assert() }
            }
        }
        if !vectorFDs.isEmpty {
            let fds = vectorFDs
            msix = try vm.makeMSIXTable(eventfds: fds, state: page, signal: { EventFD.signal(fds[$0]) })
        }
    }

    /// A register write is about to be sent to the device (vCPU thread,
    /// before the send: a kick that follows it sees the count).
    func countWrite() { _ = page.add(InterruptPage.writesSentWord, 1) }

    /// The guest read the ISR (vCPU thread): read-to-clear, here.
    func readISR() -> UInt8 {
        let value = page.readAndClearISR()
        if relayed { line?.deassert() }
        return value
    }

    /// For transports whose status register is not read-to-clear
    /// (virtio-mmio: InterruptStatus is read with `isrBits`, cleared by a
    /// write of the handled bits to InterruptACK).
    var isrBits: UInt8 { page.isr }

    func acknowledge(_ bits: UInt8) {
        let old = page.and(InterruptPage.isrWord, ~UInt32(bits))
        if relayed && old & ~UInt32(bits) & 0xff == 0 { line?.deassert() }
    }
}
