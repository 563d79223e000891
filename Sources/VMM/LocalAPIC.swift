import CKVM
import VMDSystem

extension KVMVCPU {
    /// LINT0 = ExtINT, LINT1 = NMI (see ckvm_lapic.h): lets the in-kernel
    /// 8259 interrupt this vCPU, as a BIOS would have arranged.
    func setVirtualWire() throws {
        let e = ckvm_set_virtual_wire(fd)
        if e != 0 { throw SystemError("KVM_SET_LAPIC (LINT0/LINT1) on vCPU \(id)", code: e) }
    }
}
