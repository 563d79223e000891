import VMM
import Virtio

/// The same proxy as a virtio-mmio slot (the microVM shape): accesses to
/// the slot go to the device process exactly as BAR accesses do (the
/// offset in the slot is the register), and the interrupt line is the
/// slot's own. The line follows the device's KICK messages, whatever
/// carries them, so a faster interrupt path can replace them unchanged.
extension VirtioProxy: BusDevice {
    func read(offset: UInt64, size: Int) -> UInt64 {
        guard offset < UInt64(VirtioMMIOLayout.slotSize) else { return 0 }
        return UInt64(barRead(bar: 0, offset: UInt32(offset), size: size))
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        guard offset < UInt64(VirtioMMIOLayout.slotSize) else { return }
        barWrite(bar: 0, offset: UInt32(offset), size: size, value: UInt32(truncatingIfNeeded: value))
    }

    /// Takes the next virtio-mmio slot of `vm` and points the queue-notify
    /// eventfds at its QueueNotify register (a 4-byte write of the queue
    /// index): kicks reach the device process without an exit. Without
    /// them, a notify still arrives as an IO_WRITE.
    @discardableResult
    func attachMMIO(to vm: VirtualMachine) throws -> InterruptLine {
        let (address, line) = try vm.addVirtioMMIODevice(self)
        interrupt = line
        let notify = address + VirtioMMIOSlots.queueNotifyOffset
        var registered: [Int32] = []
        do {
            for (i, fd) in notifyFDs.enumerated() {
                try vm.mmioEventFD(fd, address: notify, length: 4, value: UInt64(i), assign: true)
                registered.append(fd)
            }
        } catch {
            for (i, fd) in registered.enumerated() {
                try? vm.mmioEventFD(fd, address: notify, length: 4, value: UInt64(i), assign: false)
            }
            onFailure?("\(name): queue notify eventfds: \(error); notifies go through the VM process")
        }
        return line
    }
}
