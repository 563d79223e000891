import CKVM

/// Per-vCPU CPUID from KVM_GET_SUPPORTED_CPUID: a package of `cpus` cores, one
/// thread each, APIC id = vCPU index (so ids fit the core field of leaf 0xB).
enum CPUIDTopology {
    static let hypervisorBit: UInt32 = 1 << 31  // leaf 1 ECX
    static let htBit: UInt32 = 1 << 28          // leaf 1 EDX: more than one logical CPU per package

    /// Bits of APIC id that number the cores: ceil(log2(cpus)).
    static func coreShift(_ cpus: Int) -> UInt32 {
        var shift: UInt32 = 0
        while (1 << shift) < cpus { shift += 1 }
        return shift
    }

    static func entries(_ supported: [kvm_cpuid_entry2], vcpu: Int, cpus: Int) -> [kvm_cpuid_entry2] {
        let apicID = UInt32(vcpu)
        let count = UInt32(max(cpus, 1))
        return supported.map { original in
            var e = original
            switch e.function {
            case 1:
                e.ebx = (e.ebx & 0x0000_FFFF) | (min(count, 255) << 16) | (apicID << 24)
                e.ecx |= hypervisorBit
                if count > 1 { e.edx |= htBit } else { e.edx &= ~htBit }
            case 4:
                // EAX[31:26]: cores per package - 1 (cache leaves keep their other fields).
                if e.eax & 0x1F != 0 { e.eax = (e.eax & 0x03FF_FFFF) | ((min(count, 64) - 1) << 26) }
            case 0xB, 0x1F:
                switch e.index {
                case 0:  // SMT level: one thread per core
                    e.eax = 0; e.ebx = 1; e.ecx = (1 << 8) | 0
                case 1:  // core level
                    e.eax = coreShift(cpus); e.ebx = count; e.ecx = (2 << 8) | 1
                default:
                    e.eax = 0; e.ebx = 0; e.ecx = e.index
                }
                e.edx = apicID
            default:
                break
            }
            return e
        }
    }
}
