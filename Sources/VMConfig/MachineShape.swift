/// `virtio pci` (the default) or `virtio mmio`: how the VM presents its
/// virtio devices. With mmio the VM has no PCI bus at all (the microVM
/// shape); the devices are virtio-mmio slots announced on the kernel
/// command line.
public enum VirtioTransport: String, CaseIterable, Equatable, Sendable {
    case pci, mmio
}

/// `boot "path" format linux|pvh|multiboot`: the boot protocol to use
/// for the kernel instead of choosing by what the file carries (a bzImage
/// header, then a PVH ELF note, then a Multiboot header).
public enum KernelFormat: String, CaseIterable, Equatable, Sendable {
    case linux, pvh, multiboot
}
