import ArgumentParser
import Glibc
import VMDControl

extension VMCtl {
    /// `start [-cL] [-B device] [-b path] [-d disk] [-i count] [-m size]
    /// [-n switch] [-r path] [-t parent] name`: a VM from vm.conf, or a new
    /// one made from the flags.
    struct Start: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "start",
            abstract: "Start a configured VM, or create and start one from the flags.")

        @OptionGroup var global: GlobalOptions

        @Flag(name: .customShort("c"), help: "Attach to the VM's console once it has started.")
        var console = false

        @Flag(name: .customShort("L"), help: "Add a local interface (a /31 with DHCP from vmd).")
        var localInterface = false

        @Option(name: .customShort("B"), help: ArgumentHelp("Boot from disk, cdrom or net.", valueName: "device"))
        var bootDevice: String?

        @Option(name: .customShort("b"), help: ArgumentHelp("Kernel or BIOS image to boot.", valueName: "path"))
        var bootPath: String?

        @Option(name: .customShort("d"),
                help: ArgumentHelp("Disk image, [raw:|qcow2:]path (repeatable, at most 4).", valueName: "disk"))
        var disks: [String] = []

        @Option(name: .customShort("i"), help: ArgumentHelp("Number of network interfaces.", valueName: "count"))
        var interfaceCount: String?

        @Option(name: .customShort("m"), help: ArgumentHelp("Memory size, e.g. 512M or 1.5G.", valueName: "size"))
        var memory: String?

        @Option(name: .customShort("n"), help: ArgumentHelp("Attach an interface to this switch.", valueName: "switch"))
        var switches: [String] = []

        @Option(name: .customShort("r"), help: ArgumentHelp("ISO image to attach as a CD-ROM.", valueName: "path"))
        var cdrom: String?

        @Option(name: .customShort("t"), help: ArgumentHelp("Create the VM as an instance of this VM.", valueName: "parent"))
        var parent: String?

        @Argument(help: ArgumentHelp("The VM's name or id.", valueName: "name"))
        var name: String

        /// The request the flags describe; throws ValidationError for bad flags.
        func request() throws -> StartRequest {
            var req = StartRequest(name: name)
            if let problem = VMName.problem(name) { throw ValidationError(problem) }
            if let b = bootPath { req.bootPath = try StartOptions.absolutePath(b, what: "boot image") }
            if let d = bootDevice {
                guard ["disk", "cdrom", "net"].contains(d) else {
                    throw ValidationError("unknown boot device \(d) (expected disk, cdrom or net)")
                }
                req.bootDevice = d
            }
            if let m = memory { req.memoryBytes = try StartOptions.memory(m) }
            if let i = interfaceCount { req.interfaceCount = try StartOptions.interfaces(i) }
            guard disks.count <= StartOptions.maxDisks else {
                throw ValidationError("too many disks (at most \(StartOptions.maxDisks))")
            }
            req.disks = try disks.map { try StartOptions.disk($0) }
            if let r = cdrom { req.cdrom = try StartOptions.absolutePath(r, what: "iso image") }
            if let t = parent {
                if VMName.problem(t) != nil { throw ValidationError("invalid parent vm name: \(t)") }
                req.parent = t
            }
            // The protocol carries one switch and one local interface per request.
            guard switches.count <= 1 else {
                throw ValidationError("only one -n switch can be given (vmd takes one per start request)")
            }
            req.switchName = switches.first ?? ""
            req.localInterface = localInterface
            let nics = switches.count + (localInterface ? 1 : 0)
            if Int(req.interfaceCount) < nics { req.interfaceCount = UInt32(nics) }
            guard req.interfaceCount <= StartOptions.maxInterfaces else {
                throw ValidationError("too many network interfaces (at most \(StartOptions.maxInterfaces))")
            }
            return req
        }

        func run() throws {
            let req: StartRequest
            do { req = try request() } catch let error as ValidationError {
                Output.warn("start \(name): \(error.message)")
                throw ExitCode.failure
            }
            let connection = global.connect()
            var started: VMInfo?
            try reportingFailures(verb: "start") {
                try connection.send(.vmdStartVMRequest, req.encoded())
                let reply = try connection.receive()
                guard reply.type == .vmdStartVMResponse else { throw connection.unexpected(reply.type) }
                started = try connection.decodeInfo(reply.data)
            }
            guard let info = started else { return }
            // As vmd's vmctl: with -c the console replaces the success message.
            if console { ConsoleSession.attach(name: info.name, connection: connection) }
            Output.warn("started vm \(info.id) successfully, tty \(info.tty)")
        }
    }
}

/// Checks of `vmctl start`'s flag values, as vmctl.c does them.
enum StartOptions {
    static let maxDisks = 4
    static let maxInterfaces = 4
    static let minMemory: UInt64 = 1 << 20
    /// vmd's VMM_MAX_VM_MEM_SIZE (vm.conf's limit too).
    static let maxMemory: UInt64 = 128 << 30

    /// `-m size`: at least 1M, at most 128G, rounded down to whole megabytes
    /// (with a warning, as vmctl gives one).
    static func memory(_ text: String) throws -> UInt64 {
        let bytes: UInt64
        do { bytes = try ScaledSize.parse(text) } catch {
            throw ValidationError("invalid memory size: \(text)")
        }
        guard bytes >= minMemory else { throw ValidationError("memory size must be at least 1M") }
        guard bytes <= maxMemory else {
            throw ValidationError("memory size too large (limit is \(ScaledSize.format(maxMemory)))")
        }
        let rounded = bytes / minMemory * minMemory
        if rounded != bytes { Output.warn("memory size rounded to \(ScaledSize.format(rounded))") }
        return rounded
    }

    /// `-i count`: 1 to 4.
    static func interfaces(_ text: String) throws -> UInt32 {
        guard let n = UInt32(text), n >= 1 else { throw ValidationError("invalid interface count: \(text)") }
        guard n <= UInt32(maxInterfaces) else {
            throw ValidationError("too many network interfaces (at most \(maxInterfaces))")
        }
        return n
    }

    /// `-d [raw:|qcow2:]path`: the path made absolute (the daemon runs
    /// elsewhere), the format prefix kept for the daemon.
    static func disk(_ text: String) throws -> String {
        for format in ["raw:", "qcow2:"] where text.hasPrefix(format) {
            return format + (try absolutePath(String(text.dropFirst(format.count)), what: "disk"))
        }
        return try absolutePath(text, what: "disk")
    }

    /// realpath(3), as vmctl resolves every path it sends: the daemon's
    /// working directory is not the user's.
    static func absolutePath(_ path: String, what: String) throws -> String {
        guard !path.isEmpty else { throw ValidationError("empty \(what) path") }
        guard let resolved = realpath(path, nil) else {
            throw ValidationError("invalid \(what) path: \(path): \(String(cString: strerror(errno)))")
        }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
