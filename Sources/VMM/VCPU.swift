import CKVM
import VMDSystem
import Glibc
import VMDSystem

/// What a vCPU thread asks of the VM between two KVM_RUNs.
protocol VCPUControl: AnyObject {
    /// Blocks while the VM is paused; false when the thread must end.
    func checkpoint(_ vcpu: VCPU) -> Bool
    /// Ends the VM (power-off, reset, failure). Safe from any thread, once wins.
    func requestExit(_ reason: VMExitReason)
    var ioBus: Bus { get }
    var mmioBus: Bus { get }
    func log(_ message: String)
}

/// One vCPU on its own pthread, looping on KVM_RUN and dispatching exits.
final class VCPU {
    let kvm: KVMVCPU
    private unowned let control: VCPUControl
    var thread: pthread_t?
    private var warned = Set<String>()

    var id: Int { kvm.id }

    init(kvm: KVMVCPU, control: VCPUControl) {
        self.kvm = kvm
        self.control = control
    }

    func loop() {
        Threads.unblockWakeSignal()
        while control.checkpoint(self) {
            let error = kvm.runOnce()
            if error == EINTR || error == EAGAIN { continue }  // kicked, or immediate_exit
            if error != 0 {
                control.requestExit(.failed("vCPU \(id): KVM_RUN: \(errnoDescription(error))"))
                continue
            }
            dispatch(kvm.exitReason)
        }
    }

    private func dispatch(_ reason: UInt32) {
        switch reason {
        case CKVM_EXIT_IO:
            handleIO()
        case CKVM_EXIT_MMIO:
            handleMMIO()
        case CKVM_EXIT_HLT, CKVM_EXIT_INTR:
            break  // the in-kernel LAPIC handles HLT; INTR: a signal arrived
        case CKVM_EXIT_SHUTDOWN:
            control.log("vCPU \(id): triple fault, resetting")
            control.requestExit(.reboot)
        case CKVM_EXIT_SYSTEM_EVENT:
            switch kvm.systemEventType {
            case CKVM_SYSTEM_EVENT_SHUTDOWN: control.requestExit(.powerOff)
            case CKVM_SYSTEM_EVENT_RESET: control.requestExit(.reboot)
            default: control.requestExit(.failed("vCPU \(id): system event \(kvm.systemEventType)"))
            }
        case CKVM_EXIT_FAIL_ENTRY:
            control.requestExit(.failed("vCPU \(id): KVM could not enter the guest (hardware reason 0x\(hex(kvm.failEntryReason)))"))
        case CKVM_EXIT_INTERNAL_ERROR:
            let rip = (try? kvm.getRegisters().rip).map { "0x" + hex($0) } ?? "?"
            control.requestExit(.failed("vCPU \(id): KVM internal error \(kvm.internalSuberror) at RIP \(rip) (emulation failure?)"))
        default:
            control.requestExit(.failed("vCPU \(id): unexpected KVM exit reason \(reason)"))
        }
    }

    private func handleIO() {
        let io = kvm.ioExit
        // The kernel fills these, but a size or offset we do not understand must
        // not make us touch memory outside the kvm_run mapping.
        let (bytes, overflow) = io.size.multipliedReportingOverflow(by: io.count)
        guard [1, 2, 4].contains(io.size), io.count >= 1, !overflow, io.dataOffset >= 0,
              io.dataOffset <= kvm.mmapSize - bytes else {
            warnOnce("io size \(io.size) count \(io.count) offset \(io.dataOffset)")
            return
        }
        let data = kvm.run + io.dataOffset
        for i in 0..<io.count {
            let p = data + i * io.size
            if io.input {
                store(control.ioBus.read(UInt64(io.port), size: io.size), to: p, size: io.size)
            } else {
                control.ioBus.write(UInt64(io.port), size: io.size, value: load(p, size: io.size))
            }
        }
    }

    private func handleMMIO() {
        let mmio = kvm.mmioExit
        guard (1...8).contains(mmio.length) else {
            warnOnce("mmio length \(mmio.length) at 0x\(hex(mmio.address))")
            return
        }
        let data = UnsafeMutableRawPointer(kvm.mmioData)
        if mmio.write {
            control.mmioBus.write(mmio.address, size: mmio.length, value: load(data, size: mmio.length))
        } else {
            store(control.mmioBus.read(mmio.address, size: mmio.length), to: data, size: mmio.length)
        }
    }

    private func warnOnce(_ what: String) {
        if warned.count < 16 && warned.insert(what).inserted { control.log("vCPU \(id): ignored exit: \(what)") }
    }

    private func load(_ p: UnsafeMutableRawPointer, size: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<size { v |= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << (8 * UInt64(i)) }
        return v
    }

    private func store(_ v: UInt64, to p: UnsafeMutableRawPointer, size: Int) {
        for i in 0..<size { p.storeBytes(of: UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))), toByteOffset: i, as: UInt8.self) }
    }

    // MARK: initial state

    /// Puts the boot vCPU at the loader's entry point.
    func setEntry(_ entry: BootEntry) throws {
        if entry == .firmware { return }  // KVM's reset state is the BIOS's entry
        var sregs = try kvm.getSpecialRegisters()
        var regs = kvm_regs()
        regs.rflags = 0x2
        func segment(selector: UInt16, code: Bool, long: Bool) -> kvm_segment {
            var s = kvm_segment()
            s.base = 0
            s.limit = 0xFFFF_FFFF
            s.selector = selector
            s.type = code ? 11 : 3  // execute/read accessed, read/write accessed
            s.present = 1
            s.dpl = 0
            s.db = long && code ? 0 : 1
            s.s = 1
            s.l = long && code ? 1 : 0
            s.g = 1
            return s
        }
        let long: Bool
        switch entry {
        case let .protected32(eip, eax, ebx):
            long = false
            regs.rip = UInt64(eip)
            regs.rax = UInt64(eax)
            regs.rbx = UInt64(ebx)
            sregs.cr0 = 0x11  // PE, ET: paging off, caches on
            sregs.cr4 = 0
            sregs.efer = 0
        case let .long64(rip, rsi, rsp, cr3):
            long = true
            regs.rip = rip
            regs.rsi = rsi
            regs.rsp = rsp
            regs.rbp = rsp
            sregs.cr0 = 0x8000_0031  // PG, NE, ET, PE
            sregs.cr3 = cr3
            sregs.cr4 = 0x20  // PAE
            sregs.efer = 0x500  // LME, LMA
            sregs.idt.base = BootLayout.idt
            sregs.idt.limit = 7
        case .firmware:
            return
        }
        sregs.cs = segment(selector: BootLayout.codeSelector, code: true, long: long)
        let data = segment(selector: BootLayout.dataSelector, code: false, long: long)
        sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
        sregs.gdt.base = BootLayout.gdt
        sregs.gdt.limit = 31
        try kvm.setSpecialRegisters(sregs)
        try kvm.setRegisters(regs)
    }
}
