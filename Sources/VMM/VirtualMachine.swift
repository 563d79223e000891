import CKVM
import VMDSystem
import Glibc

/// What to run.
public struct VMSpec {
    public var name: String
    public var memoryBytes: UInt64
    public var vcpus: Int
    public var kernelPath: String
    public var commandLine: String
    public var initrdPath: String?
    /// How messages (and the Multiboot command line) name the kernel and the
    /// initrd when the paths are not what a user knows them by
    /// (`/proc/self/fd/3` for an fd the parent opened). Default: the paths.
    public var kernelName: String?
    public var initrdName: String?
    /// Bytes of console output kept for replay.
    public var consoleHistoryBytes: Int
    /// Devices the DSDT describes besides the built-in ones (COM1, RTC, PCI root).
    public var acpiDevices: [ACPIDeviceDescription] = []
    /// Which boot protocol to use for the kernel (default: by what it carries).
    public var bootProtocol: BootProtocol = .automatic
    /// nil: a PC with a PCI host bridge. N: the microVM shape, no PCI at
    /// all and N virtio-mmio slots (VirtioMMIOSlots), announced on the
    /// kernel command line.
    public var virtioMMIOSlots: Int?

    public init(name: String, memoryBytes: UInt64, vcpus: Int = 1, kernelPath: String,
                commandLine: String = "", initrdPath: String? = nil, consoleHistoryBytes: Int = 64 * 1024,
                kernelName: String? = nil, initrdName: String? = nil) {
        self.name = name
        self.memoryBytes = memoryBytes
        self.vcpus = vcpus
        self.kernelPath = kernelPath
        self.commandLine = commandLine
        self.initrdPath = initrdPath
        self.consoleHistoryBytes = consoleHistoryBytes
        self.kernelName = kernelName
        self.initrdName = initrdName
    }
}

/// Why the guest stopped on its own.
public enum VMExitReason: Equatable {
    case powerOff           // port 0x604 SLP_EN, or KVM's shutdown system event
    case reboot             // triple fault, i8042 reset (0xFE), port 0xCF9 reset
    case failed(String)     // KVM could not run the guest
}

/// A KVM guest: memory, vCPUs, legacy devices, the PCI bus and the console.
///
/// `init` does every privileged step (opens /dev/kvm, creates the VM, the
/// memfd, the pty, reads the kernel and initrd); after it the process may drop
/// privileges. `start` runs one pthread per vCPU.
///
/// ## Threads, signals and fds the host process must know about
/// - One pthread per vCPU, started by `start`, ended by `stop` (joined) or after
///   the guest exits on its own (they end by themselves; `stop` joins them).
/// - vCPUs are kicked out of KVM_RUN with SIGRTMIN (`Threads.wake`), whose
///   empty handler `init` installs (no SA_RESTART). vCPU threads unblock it
///   themselves; other threads may block it. Do not use SIGRTMIN for anything else.
/// - `onExit` is called once, on a vCPU thread, when the guest powers off, resets
///   or fails; forward it to the event loop (e.g. a pipe write) and call `stop()`
///   from there (a `stop()` inside `onExit` only asks the threads to end; it
///   cannot join them). Never call `pause` from a vCPU thread: it would wait for
///   itself.
/// - fds: `memoryFD` (sealed memfd, pass to device processes with
///   `memoryRegions`), `consoleMasterFD` (non-blocking; when readable, read at most
///   `consoleReceiveSpace` bytes and call `consoleReceive`), `consoleSlaveFD` (kept
///   open so the master never reads EIO/HUP while nobody is attached; the name is
///   `consoleName`), plus the /dev/kvm, VM and vCPU fds. All are close-on-exec.
/// - PCI functions' `barRead`/`barWrite` and `InterruptLine` are called on vCPU
///   threads; `InterruptLine.assert/deassert` may be called from any thread.
///
/// ## System calls after `start` (for the seccomp allow-list)
/// vCPU threads and the calls above use exactly (checked with `strace -f` on
/// vmtest with 2 vCPUs):
/// - `ioctl` with KVM_RUN (vCPU fds), KVM_IRQ_LINE (VM fd), and KVM_GET_REGS
///   only to name the RIP in the message of a KVM internal error; no other ioctl.
/// - `write` (console pty master, stderr for log lines), `read` by the host's own
///   console loop on the master.
/// - `futex` (locks, condition variables), `tgkill` + `rt_sigprocmask` + `getpid` + `gettid`
///   (pthread_kill for kicks), `rt_sigreturn` (the kick handler returns),
///   `rt_sigprocmask` (vCPU threads unblock the kick signal).
/// - `clock_gettime` / `gettimeofday` / `time` (RTC; normally vDSO, allow anyway).
/// - memory for the Swift runtime: `mmap`, `munmap`, `mprotect`, `madvise`, `brk`.
/// - thread end: `exit`, `munmap` (stacks), `madvise`; `close` and `munmap` at
///   `stop`/deinit.
/// - if `start` runs after the filter is installed: `clone3` (or `clone` with
///   CLONE_THREAD), `set_robust_list`, `rseq`, `mmap`/`mprotect` (thread stacks),
///   `sched_getaffinity`. Otherwise install the filter with TSYNC after `start`.
/// Before `start` (privileged setup) the VM uses: open (/dev/kvm, kernel,
/// initrd, /dev/ptmx, the pty slave), KVM_GET_API_VERSION, KVM_CHECK_EXTENSION,
/// KVM_GET_VCPU_MMAP_SIZE, KVM_GET_SUPPORTED_CPUID, KVM_CREATE_VM,
/// KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR, KVM_CREATE_IRQCHIP,
/// KVM_CREATE_PIT2, KVM_SET_USER_MEMORY_REGION, KVM_GET_IRQCHIP, KVM_SET_IRQCHIP,
/// KVM_CREATE_VCPU, KVM_SET_CPUID2, KVM_GET_LAPIC, KVM_SET_LAPIC (LINT0/LINT1
/// virtual wire), KVM_GET_SREGS, KVM_SET_SREGS, KVM_SET_REGS,
/// memfd_create, ftruncate, fcntl(F_ADD_SEALS), mmap, TIOCGPTN/TIOCSPTLCK
/// (grantpt/unlockpt/ptsname), tcgetattr/tcsetattr, fstat, pread, sigaction.
public final class VirtualMachine {
    public let spec: VMSpec
    public let boot: BootResult

    private let kvm: KVMSystem
    let kvmVM: KVMVirtualMachine
    let msiRouter: MSIRouter
    private let memory: GuestMemory
    private let console: Console
    private let serial: Serial8250
    private let pci: PCIBus
    private var mmioSlotsUsed = 0
    /// Guest RAM, for tests that look at what the loader wrote.
    var memoryForTesting: GuestMemory { memory }
    private let interrupts: InterruptRouter
    private var power: PowerManagement?
    private let fwcfg: FwCfg
    private var rom: BIOS.ROM?
    private var functionSlots: [ObjectIdentifier: Int] = [:]
    /// The ACPI tables the guest sees (position-independent form).
    public let acpi: ACPITables
    private let state = RunState()
    private var vcpus: [VCPU] = []
    private var started = false
    private var joined = false
    private var abandoned = false
    let ioBus: Bus
    let mmioBus: Bus

    private let logSink: LogSink
    /// Log lines (`vm NAME: ...`); replace before `start` to route them elsewhere.
    public var logger: (String) -> Void {
        get { logSink.write }
        set { logSink.write = newValue }
    }

    // MARK: what the host process hands on

    public var memoryFD: Int32 { memory.fd }
    public var memoryRegions: [MemoryRegion] { memory.layout.regions }
    public var memoryLayout: GuestMemoryLayout { memory.layout }
    public var consoleName: String { console.slaveName }
    public var consoleMasterFD: Int32 { console.masterFD }
    public var consoleSlaveFD: Int32 { console.slaveFD }

    /// Console input (the master was readable). Returns how many bytes the UART took.
    @discardableResult
    public func consoleReceive(_ bytes: [UInt8]) -> Int { serial.receive(bytes) }
    public var consoleReceiveSpace: Int { serial.receiveSpace }
    /// The last `consoleHistoryBytes` of console output.
    public func consoleReplay() -> [UInt8] { console.ring.snapshot() }
    /// Sees every console output byte too (on vCPU threads); for tests and logs.
    public func setConsoleObserver(_ observer: (([UInt8]) -> Void)?) { console.tap = observer }

    public init(spec: VMSpec) throws {
        self.spec = spec
        let name = spec.name
        let logSink = LogSink { { Log.info($0) }("vm \(name): \($0)") }
        self.logSink = logSink
        let logger: (String) -> Void = { logSink.write($0) }
        try Threads.installWakeHandler()

        kvm = try KVMSystem()
        let maxVCPUs = min(kvm.maxVCPUs, MPTable.maxCPUs)
        guard spec.vcpus >= 1, spec.vcpus <= maxVCPUs else {
            throw VMMError("vm \(name): \(spec.vcpus) vCPUs; this host allows 1 to \(maxVCPUs)")
        }
        kvmVM = try kvm.createVM()
        kvmVM.log = logger
        msiRouter = MSIRouter(vm: kvmVM)
        try kvmVM.setTSSAddress()
        try kvmVM.setIdentityMapAddress()
        try kvmVM.createIRQChip()
        try kvmVM.createPIT()
        try kvmVM.setELCR(master: PCIBus.masterELCR, slave: PCIBus.slaveELCR)

        let layout = try GuestMemoryLayout(memoryBytes: spec.memoryBytes)
        memory = try GuestMemory(layout: layout, name: name)
        for (slot, mapping) in memory.mappings.enumerated() {
            try kvmVM.setMemoryRegion(slot: UInt32(slot), guestPhysical: mapping.region.guestPhysical,
                                      size: mapping.region.size, host: mapping.host)
        }

        if let slots = spec.virtioMMIOSlots, slots > VirtioMMIOSlots.maxSlots {
            throw VMMError("vm \(name): \(slots) virtio-mmio devices; at most \(VirtioMMIOSlots.maxSlots)")
        }
        // Loading comes before the pty so a bad kernel leaves nothing open.
        boot = try BootLoader.load(kernel: BootFile(path: spec.kernelPath, name: spec.kernelName),
                                   commandLine: VirtioMMIOSlots.commandLine(spec.commandLine,
                                                                            slots: spec.virtioMMIOSlots ?? 0),
                                   initrd: spec.initrdPath.map { BootFile(path: $0, name: spec.initrdName) },
                                   memory: memory, protocol: spec.bootProtocol)
        acpi = ACPITables(cpus: spec.vcpus,
                          devices: spec.acpiDevices + VirtioMMIOSlots.acpiDevices(slots: spec.virtioMMIOSlots ?? 0))
        fwcfg = FwCfg(cpus: spec.vcpus, memory: memory)
        if let image = boot.firmware {
            // The BIOS builds its own MP table and loads our ACPI tables through fw_cfg.
            rom = try BIOS.ROM(image, vmFD: kvmVM.fd)
            BIOS.configure(fwcfg, layout: layout, acpi: acpi)
        } else {
            try memory.write(MPTable.build(cpus: spec.vcpus, virtioMMIOIRQs: spec.virtioMMIOSlots.map {
                Array(VirtioMMIOSlots.irqs.prefix($0)) }).bytes, at: BootLayout.mpTable, what: "MP table")
            try acpi.write(to: memory)
        }

        let pty = try Pty.open()
        console = Console(pty: pty, ringCapacity: spec.consoleHistoryBytes)
        ioBus = Bus(name: "io", log: logger)
        mmioBus = Bus(name: "mmio", log: logger)
        interrupts = InterruptRouter(controller: kvmVM)
        let com1 = interrupts.line(irq: 4)
        let console = self.console
        serial = Serial8250(irq: com1, output: { console.output($0) })
        pci = PCIBus(ioBus: ioBus, mmioBus: mmioBus, log: logger)
        // Fully initialized from here: a throw runs deinit, which closes the pty.
        state.attach(ioBus: ioBus, mmioBus: mmioBus, log: logger)
        try setUpDevices(layout: layout)
        let supported = try kvm.supportedCPUID()
        let mmapSize = kvm.vcpuMmapSize
        for id in 0..<spec.vcpus {
            let vcpu = try kvmVM.createVCPU(id: id, mmapSize: mmapSize)
            try vcpu.setCPUID(CPUIDTopology.entries(supported, vcpu: id, cpus: spec.vcpus))
            try vcpu.setVirtualWire()
            vcpus.append(VCPU(kvm: vcpu, control: state))
        }
        state.vcpus = vcpus
        // The boot vCPU only: KVM keeps the others waiting for INIT/SIPI.
        try vcpus[0].setEntry(boot.entry)
    }

    private func setUpDevices(layout: GuestMemoryLayout) throws {
        try ioBus.register(base: 0x3F8, length: 8, device: serial)
        try ioBus.register(base: 0x70, length: 2, device: RTC146818(lowMemoryBytes: layout.lowBytes,
                                                                    highMemoryBytes: layout.highBytes,
                                                                    cpus: spec.vcpus))
        // The microVM shape has no PCI host bridge: configuration space reads as all ones.
        if spec.virtioMMIOSlots == nil { try ioBus.register(base: 0xCF8, length: 8, device: pci) }
        let i8042 = I8042(onReset: { [unowned state] in state.requestExit(.reboot) })
        try ioBus.register(base: 0x60, length: 1, device: i8042)
        try ioBus.register(base: 0x64, length: 1, device: ShiftedPort(i8042, shift: 4))
        try ioBus.register(base: 0x80, length: 1, device: SinkDevice())
        let power = PowerManagement(sci: interrupts.line(irq: UInt32(ACPITables.sciIRQ)),
                                    onPowerOff: { [unowned state] in state.requestExit(.powerOff) }, log: logger)
        try ioBus.register(base: PowerManagement.eventBlock, length: PowerManagement.portCount, device: power)
        try ioBus.register(base: FwCfg.basePort, length: FwCfg.portCount, device: fwcfg)
        if let rom {
            // Guest writes to a read-only ROM slot exit as MMIO: dropped here.
            try mmioBus.register(base: rom.guestPhysical, length: UInt64(rom.size), device: ROMWriteSink(rom: rom))
            try ioBus.register(base: DebugConsolePort.port, length: 1, device: DebugConsolePort(log: logger))
            logger("BIOS mapped at 0x\(hex(rom.guestPhysical)) (\(rom.size >> 10) KiB\(rom.readOnly ? ", read-only" : ", writable: KVM has no read-only slots"))")
        }
        self.power = power
        pci.onReset = { [unowned state] in state.requestExit(.reboot) }
        // Port 0x61 is the in-kernel PIT's speaker port (KVM_PIT_SPEAKER_DUMMY);
        // 0x20/0xA0/0x4D0/0x4D1 the in-kernel PICs, 0x40-0x43 the PIT.
    }

    deinit {
        stop()
        ioBus.removeAll()
        mmioBus.removeAll()
        console.close()
    }

    /// Puts `function` on the PCI bus (before `start`). Returns its interrupt line.
    /// Makes a guest write to `port` signal `eventfd` in the kernel (no
    /// exit): a device process's queue notify. `value` matches the data
    /// written (the queue index); `assign: false` removes it again.
    public func portEventFD(_ eventfd: Int32, port: UInt16, length: Int, value: UInt64?, assign: Bool) throws {
        let e = ckvm_port_ioeventfd(kvmVM.fd, port, UInt32(length), eventfd, value == nil ? 0 : 1,
                                    value ?? 0, assign ? 1 : 0)
        if e != 0 { throw SystemError("KVM_IOEVENTFD port 0x\(hex(UInt64(port)))", code: e) }
    }

    /// BIOS boot: the device SeaBIOS tries first (its `bootorder`); the
    /// function must be on the bus. `scsi` for the virtio-scsi CD-ROM.
    public func bootFirst(_ function: PCIFunction, scsi: Bool) throws {
        guard let slot = functionSlots[ObjectIdentifier(function)] else {
            throw VMMError("boot device: the function is not on the PCI bus")
        }
        fwcfg.setFile("bootorder", BIOS.bootOrder([BIOS.bootPath(slot: slot, scsi: scsi)]))
        logger("BIOS boots \(BIOS.bootPath(slot: slot, scsi: scsi)) first")
    }

    public var isFirmwareBoot: Bool { boot.firmware != nil }

    /// Puts `device` in the next virtio-mmio slot (before `start`; only in
    /// the microVM shape, as many as `spec.virtioMMIOSlots`). Returns the
    /// slot's address and its interrupt line.
    public func addVirtioMMIODevice(_ device: BusDevice) throws -> (address: UInt64, line: InterruptLine) {
        guard let slots = spec.virtioMMIOSlots, mmioSlotsUsed < slots else {
            throw VMMError("vm \(spec.name): no virtio-mmio slot left (\(spec.virtioMMIOSlots ?? 0) announced)")
        }
        let slot = mmioSlotsUsed
        let address = VirtioMMIOSlots.address(slot: slot)
        try mmioBus.register(base: address, length: VirtioMMIOSlots.slotSize, device: device)
        mmioSlotsUsed += 1
        let irq = VirtioMMIOSlots.irqs[slot]
        logger("virtio-mmio slot \(slot): 0x\(hex(address)) on IRQ \(irq)")
        return (address, interrupts.line(irq: irq))
    }

    /// Makes a guest write at `address` signal `eventfd` in the kernel (a
    /// virtio-mmio QueueNotify); `value` matches the data written.
    public func mmioEventFD(_ eventfd: Int32, address: UInt64, length: Int, value: UInt64?, assign: Bool) throws {
        let e = ckvm_mmio_ioeventfd(kvmVM.fd, address, UInt32(length), eventfd, value == nil ? 0 : 1,
                                    value ?? 0, assign ? 1 : 0)
        if e != 0 { throw SystemError("KVM_IOEVENTFD mmio 0x\(hex(address))", code: e) }
    }

    public func addPCIFunction(_ function: PCIFunction) throws -> InterruptLine {
        let (slot, irq) = try pci.add(function)
        functionSlots[ObjectIdentifier(function)] = slot
        logger("pci slot \(slot): \(hex(function.configHeader.vendorID)):\(hex(function.configHeader.deviceID)) on IRQ \(irq)")
        return interrupts.line(irq: irq)
    }

    /// Presses the ACPI power button (`vmctl stop` of a guest without
    /// vmmci). Returns whether the guest had enabled the power-button
    /// event, i.e. an ACPI OS is there to act on it.
    @discardableResult
    public func pressPowerButton() -> Bool { power?.pressPowerButton() ?? false }

    /// True while a power-button press is not acknowledged (the guest's
    /// ACPI handler clears PWRBTN_STS).
    public var powerButtonPending: Bool { power?.powerButtonPending ?? false }

    /// True once the guest enabled the ACPI power-button event.
    public var powerButtonEnabled: Bool { power?.powerButtonEnabled ?? false }

    /// Starts the vCPU threads. `onExit` runs once, on a vCPU thread.
    public func start(onExit: @escaping (VMExitReason) -> Void) throws {
        guard !started else { return }
        started = true
        state.onExit = onExit
        for vcpu in vcpus {
            state.threadStarted()
            do {
                let thread = try Threads.start { [vcpu, state] in
                    vcpu.loop()
                    state.threadEnded()
                }
                state.record(thread, for: vcpu)
            } catch {
                state.threadEnded()
                stop()
                throw error
            }
        }
    }

    /// Stops all vCPUs between two instructions; returns when they are parked.
    public func pause() { state.pause() }
    public func unpause() { state.unpause() }

    /// Ends the vCPU threads and joins them. From a vCPU thread (inside
    /// `onExit`) it only asks them to end: a thread cannot join itself.
    /// Every vCPU is kicked out of KVM_RUN (a signal, with immediate_exit
    /// set); a vCPU blocked in a device's `barRead`/`barWrite` ends only
    /// when that access returns, so the owner of such devices must release
    /// them first. With `timeout`, waits at most that long and returns false
    /// if some thread has not ended (it is left running; the process should
    /// exit); without, waits as long as it takes.
    @discardableResult
    public func stop(timeout: Double? = nil) -> Bool {
        state.stop()
        let current = Threads.current
        if vcpus.contains(where: { $0.thread.map { pthread_equal($0, current) != 0 } ?? false }) { return false }
        guard started, !joined else { return !abandoned }
        if let timeout, !state.waitForThreads(seconds: timeout) {
            abandoned = true
            joined = true
            return false
        }
        joined = true
        for vcpu in vcpus { if let thread = vcpu.thread { Threads.join(thread) } }
        return true
    }

    /// True while paused (all vCPUs parked).
    public var isPaused: Bool { state.isPaused }

    /// The ioctl requests the VM issues after `start`, from <linux/kvm.h>, for
    /// a seccomp rule on ioctl's second argument (see the list above).
    public static let ioctlsAfterStart: [(name: String, request: UInt64)] = [
        ("KVM_RUN", UInt64(CKVM_RUN)),
        ("KVM_IRQ_LINE", UInt64(CKVM_IRQ_LINE)),
        ("KVM_GET_REGS", UInt64(CKVM_GET_REGS)),  // only to report a KVM internal error
        ("KVM_IOEVENTFD", UInt64(ckvm_ioeventfd_request())),  // a guest moving a virtio BAR
        ("KVM_SET_GSI_ROUTING", UInt64(ckvm_set_gsi_routing_request())),  // a guest programming MSI-X
    ]
}

/// Reads of the ROM never get here (KVM maps it); writes do, and are dropped.
final class ROMWriteSink: BusDevice {
    let rom: BIOS.ROM
    init(rom: BIOS.ROM) { self.rom = rom }
    func read(offset: UInt64, size: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<size where Int(offset) + i < rom.size {
            v |= UInt64(rom.host.load(fromByteOffset: Int(offset) + i, as: UInt8.self)) << (8 * UInt64(i))
        }
        return v
    }
    func write(offset: UInt64, size: Int, value: UInt64) {}
}

/// Where log lines go; shared so that replacing `VirtualMachine.logger`
/// reaches the buses and devices that were built with it.
final class LogSink {
    var write: (String) -> Void
    init(_ write: @escaping (String) -> Void) { self.write = write }
}
