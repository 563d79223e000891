import CKVM
import VMDSystem
import Glibc

// The KVM ioctl layer: every ioctl this project issues goes through here.

/// `/dev/kvm`: capability checks, supported CPUID, VM creation.
final class KVMSystem {
    static let apiVersion = 12
    static let devicePath = "/dev/kvm"
    let fd: Int32

    init() throws {
        fd = try FD.open(Self.devicePath, flags: O_RDWR)
        let version = ckvm_ioctl(fd, CKVM_GET_API_VERSION, 0)
        guard version == Self.apiVersion else {
            FD.close(fd)
            throw VMMError("\(Self.devicePath): KVM API version \(version), need \(Self.apiVersion)")
        }
        let required: [(Int32, String)] = [
            (CKVM_CAP_IRQCHIP, "in-kernel irqchip"), (CKVM_CAP_PIT2, "in-kernel PIT"),
            (CKVM_CAP_USER_MEMORY, "user memory"), (CKVM_CAP_SET_TSS_ADDR, "TSS address"),
            (CKVM_CAP_IMMEDIATE_EXIT, "immediate exit"), (CKVM_CAP_EXT_CPUID, "CPUID"),
        ]
        for (capability, name) in required where checkExtension(capability) <= 0 {
            FD.close(fd)
            throw VMMError("\(Self.devicePath): KVM lacks the \(name) capability")
        }
    }

    deinit { FD.close(fd) }

    func checkExtension(_ capability: Int32) -> Int {
        Int(ckvm_ioctl(fd, CKVM_CHECK_EXTENSION, UInt(capability)))
    }

    var maxVCPUs: Int {
        let max = checkExtension(CKVM_CAP_MAX_VCPUS)
        return max > 0 ? max : checkExtension(CKVM_CAP_NR_VCPUS)
    }

    var vcpuMmapSize: Int { Int(ckvm_ioctl(fd, CKVM_GET_VCPU_MMAP_SIZE, 0)) }

    func supportedCPUID() throws -> [kvm_cpuid_entry2] {
        var entries = [kvm_cpuid_entry2](repeating: kvm_cpuid_entry2(), count: 256)
        var count: UInt32 = 0
        let e = ckvm_get_supported_cpuid(fd, &entries, UInt32(entries.count), &count)
        if e != 0 { throw SystemError("KVM_GET_SUPPORTED_CPUID", code: e) }
        return Array(entries.prefix(Int(count)))
    }

    func createVM() throws -> KVMVirtualMachine {
        let vm = ckvm_ioctl(fd, CKVM_CREATE_VM, 0)
        if vm < 0 { throw SystemError("KVM_CREATE_VM", code: Int32(-vm)) }
        return KVMVirtualMachine(fd: Int32(vm))
    }
}

/// A KVM VM fd: memory slots, irqchip, PIT, interrupt lines, vCPU creation.
final class KVMVirtualMachine: InterruptController {
    /// Below the BIOS area at the top of 4 GiB, as QEMU and Firecracker place them.
    static let tssAddress: UInt = 0xFFFB_D000
    static let identityMapAddress: UInt64 = 0xFFFB_C000
    let fd: Int32
    /// Called with a message when KVM_IRQ_LINE fails (it should not).
    var log: (String) -> Void = { Log.info($0) }

    init(fd: Int32) { self.fd = fd }
    deinit { FD.close(fd) }

    func setTSSAddress() throws {
        let r = ckvm_ioctl(fd, CKVM_SET_TSS_ADDR, Self.tssAddress)
        if r < 0 { throw SystemError("KVM_SET_TSS_ADDR", code: Int32(-r)) }
    }

    func setIdentityMapAddress() throws {
        var address = Self.identityMapAddress
        let r = ckvm_ioctl_ptr(fd, CKVM_SET_IDENTITY_MAP_ADDR, &address)
        if r < 0 { throw SystemError("KVM_SET_IDENTITY_MAP_ADDR", code: Int32(-r)) }
    }

    func createIRQChip() throws {
        let r = ckvm_ioctl(fd, CKVM_CREATE_IRQCHIP, 0)
        if r < 0 { throw SystemError("KVM_CREATE_IRQCHIP", code: Int32(-r)) }
    }

    /// The in-kernel PIT, with its port 0x61 speaker stub: Linux's PIT
    /// calibration polls channel 2's output there, which a sink would hang.
    func createPIT() throws {
        let e = ckvm_create_pit2(fd, UInt32(KVM_PIT_SPEAKER_DUMMY))
        if e != 0 { throw SystemError("KVM_CREATE_PIT2", code: e) }
    }

    func setMemoryRegion(slot: UInt32, guestPhysical: UInt64, size: UInt64, host: UnsafeMutableRawPointer) throws {
        let e = ckvm_set_user_memory_region(fd, slot, guestPhysical, size, host)
        if e != 0 { throw SystemError("KVM_SET_USER_MEMORY_REGION slot \(slot) at 0x\(hex(guestPhysical))", code: e) }
    }

    func setELCR(master: UInt8, slave: UInt8) throws {
        let e = ckvm_set_pic_elcr(fd, master, slave)
        if e != 0 { throw SystemError("KVM_SET_IRQCHIP (ELCR)", code: e) }
    }

    func elcr() throws -> (master: UInt8, slave: UInt8) {
        var master: UInt8 = 0, slave: UInt8 = 0
        let e = ckvm_get_pic_elcr(fd, &master, &slave)
        if e != 0 { throw SystemError("KVM_GET_IRQCHIP", code: e) }
        return (master, slave)
    }

    func setIRQ(_ irq: UInt32, level: Bool) {
        let e = ckvm_irq_line(fd, irq, level ? 1 : 0)
        if e != 0 { log("KVM_IRQ_LINE \(irq): \(String(cString: strerror(e)))") }
    }

    func createVCPU(id: Int, mmapSize: Int) throws -> KVMVCPU {
        let r = ckvm_ioctl(fd, CKVM_CREATE_VCPU, UInt(id))
        if r < 0 { throw SystemError("KVM_CREATE_VCPU \(id)", code: Int32(-r)) }
        let vcpuFD = Int32(r)
        do {
            let run = try SharedMemory.map(fd: vcpuFD, size: mmapSize, what: "kvm_run of vCPU \(id)")
            return KVMVCPU(id: id, fd: vcpuFD, run: run, mmapSize: mmapSize)
        } catch {
            FD.close(vcpuFD)
            throw error
        }
    }
}

/// A vCPU fd and its shared kvm_run page.
final class KVMVCPU {
    let id: Int
    let fd: Int32
    let run: UnsafeMutableRawPointer
    let mmapSize: Int

    init(id: Int, fd: Int32, run: UnsafeMutableRawPointer, mmapSize: Int) {
        self.id = id
        self.fd = fd
        self.run = run
        self.mmapSize = mmapSize
    }

    deinit {
        SharedMemory.unmap(run, size: mmapSize)
        FD.close(fd)
    }

    private var runStruct: UnsafeMutablePointer<kvm_run> { run.assumingMemoryBound(to: kvm_run.self) }

    /// KVM_RUN; returns 0 or the errno (EINTR when kicked).
    func runOnce() -> Int32 {
        let r = ckvm_ioctl(fd, CKVM_RUN, 0)
        return r < 0 ? Int32(-r) : 0
    }

    var exitReason: UInt32 { ckvm_run_exit_reason(runStruct) }
    func setImmediateExit(_ on: Bool) { ckvm_run_set_immediate_exit(runStruct, on ? 1 : 0) }

    struct IOExit { var input: Bool; var size: Int; var port: UInt16; var count: Int; var dataOffset: Int }
    var ioExit: IOExit {
        var direction: UInt8 = 0, size: UInt8 = 0, port: UInt16 = 0, count: UInt32 = 0, offset: UInt64 = 0
        ckvm_run_io(runStruct, &direction, &size, &port, &count, &offset)
        return IOExit(input: direction == CKVM_EXIT_IO_IN, size: Int(size), port: port, count: Int(count),
                      dataOffset: Int(truncatingIfNeeded: offset))
    }

    struct MMIOExit { var address: UInt64; var length: Int; var write: Bool }
    var mmioExit: MMIOExit {
        var address: UInt64 = 0, length: UInt32 = 0, write: UInt8 = 0
        ckvm_run_mmio(runStruct, &address, &length, &write)
        return MMIOExit(address: address, length: Int(length), write: write != 0)
    }
    var mmioData: UnsafeMutablePointer<UInt8> { ckvm_run_mmio_data(runStruct) }
    var systemEventType: UInt32 { ckvm_run_system_event_type(runStruct) }
    var failEntryReason: UInt64 { ckvm_run_fail_entry_reason(runStruct) }
    var internalSuberror: UInt32 { ckvm_run_internal_suberror(runStruct) }

    /// One register-file ioctl: `value` is read or written in place.
    private func registerIoctl<T>(_ request: UInt, _ name: String, _ value: inout T) throws {
        let r = ckvm_ioctl_ptr(fd, request, &value)
        if r < 0 { throw SystemError(name, code: Int32(-r)) }
    }

    func getRegisters() throws -> kvm_regs {
        var regs = kvm_regs()
        try registerIoctl(CKVM_GET_REGS, "KVM_GET_REGS", &regs)
        return regs
    }

    func setRegisters(_ regs: kvm_regs) throws {
        var regs = regs
        try registerIoctl(CKVM_SET_REGS, "KVM_SET_REGS", &regs)
    }

    func getSpecialRegisters() throws -> kvm_sregs {
        var sregs = kvm_sregs()
        try registerIoctl(CKVM_GET_SREGS, "KVM_GET_SREGS", &sregs)
        return sregs
    }

    func setSpecialRegisters(_ sregs: kvm_sregs) throws {
        var sregs = sregs
        try registerIoctl(CKVM_SET_SREGS, "KVM_SET_SREGS", &sregs)
    }

    func setCPUID(_ entries: [kvm_cpuid_entry2]) throws {
        let e = ckvm_set_cpuid2(fd, entries, UInt32(entries.count))
        if e != 0 { throw SystemError("KVM_SET_CPUID2 on vCPU \(id)", code: e) }
    }
}
