import Glibc
import VMDSystem
import VMDControl
import Imsg
import Virtio
import VirtioDevices

/// The device side of a restart: the state region the VM process keeps
/// (registers and inflight records, Virtio's `DeviceStateRegion`) is mapped
/// before the sandbox; a new instance restores the transport from it and,
/// once its channels are up, serves again what its predecessor had taken
/// and never returned.
extension DeviceProcess {
    /// Maps the region and, when a predecessor left state in it, restores
    /// the transport; from then on every register access is recorded.
    func keepState() {
        guard let fd = setup.descriptors.first(.deviceState), let transport = registers as? TransportCore else { return }
        let sizes = transport.queues.map(\.maxSize)
        let region: DeviceStateRegion
        do {
            let size = try SharedMemory.size(of: fd)
            guard size >= DeviceStateRegion.size(queueMaxSizes: sizes) else {
                fail("state region of \(size) bytes is too small")
            }
            region = DeviceStateRegion(base: try SharedMemory.map(fd: fd, size: size, what: "device state"),
                                       queueMaxSizes: sizes)
            FD.close(fd)
        } catch {
            fail("cannot map the device state: \(error)")
        }
        region.instanceStarting()
        let keeper = TransportStateKeeper(transport: transport, region: region)
        stateKeeper = keeper
        if region.starts > 1 {
            do {
                if let again = try keeper.resume() {
                    Log.info("restarted (instance \(region.starts)): registers restored, \(again) request(s) in flight served again")
                } else {
                    Log.info("restarted (instance \(region.starts)): the driver had not set it up")
                }
            } catch {
                // The predecessor left state this one cannot trust: the
                // guest sees a device that needs a reset, not a crash.
                transport.deviceFailed("restart: \(error)")
            }
        }
        registers = KeptRegisters(inner: registers, keeper: keeper)
    }

    /// A restarted instance, channels up: the self-test hook for restarts,
    /// then one pass over every queue (resubmissions first, and whatever a
    /// kick the predecessor took but never served left on the ring).
    func continueAfterRestart() {
        guard let keeper = stateKeeper, keeper.region.starts > 1 else { return }
        sandboxSelfTest(role: setup.name + "@restart")
        // The INTx level is the ISR in the shared page: a predecessor may
        // have set it and died before writing the irqfd, or missed the
        // resample of the guest's EOI. Raise the line again if it is set.
        interrupts?.resampled()
        loop.after(seconds: 0) { [unowned self] in
            for i in keeper.transport.queues.indices where keeper.transport.queues[i].isEnabled {
                self.registers.notify(queue: i)
            }
        }
    }
}

/// The transport, recording its state after every access and queue run.
final class KeptRegisters: VirtioRegisterFile {
    let inner: VirtioRegisterFile
    let keeper: TransportStateKeeper

    init(inner: VirtioRegisterFile, keeper: TransportStateKeeper) {
        self.inner = inner
        self.keeper = keeper
    }

    func read(offset: UInt16, size: Int) -> UInt32 {
        defer { keeper.track() }
        return inner.read(offset: offset, size: size)
    }

    func write(offset: UInt16, size: Int, value: UInt32) {
        inner.write(offset: offset, size: size, value: value)
        keeper.track()
    }

    func notify(queue index: Int) {
        inner.notify(queue: index)
        keeper.track()
    }

    var isInterruptAsserted: Bool { inner.isInterruptAsserted }
}
