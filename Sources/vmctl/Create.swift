import ArgumentParser
import DiskImage
import Glibc

extension VMCtl {
    /// `create [-b base | -i disk] [-s size] disk`: makes a disk image
    /// itself, as the invoking user (no daemon involved), never overwriting
    /// a file. The format comes from a `raw:`/`qcow2:` prefix or the
    /// extension (`.qcow2`, else raw), as OpenBSD's vmctl decides it.
    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Create a raw or qcow2 disk image, empty, over a base image, or converted from another.")

        /// The global `-v` (moved after the command word): nothing more to say here.
        @Flag(name: .customShort("v"), help: .hidden)
        var verbose = false

        @Option(name: .customShort("b"), help: ArgumentHelp("Make a qcow2 overlay of this base image.", valueName: "base"))
        var base: String?

        @Option(name: .customShort("i"), help: ArgumentHelp("Copy (and convert) this raw or qcow2 image.", valueName: "disk"))
        var input: String?

        @Option(name: .customShort("s"), help: ArgumentHelp("Size, e.g. 4G (at least 1M).", valueName: "size"))
        var size: String?

        @Argument(help: ArgumentHelp("The image to create, [raw:|qcow2:]path.", valueName: "disk"))
        var disk: String

        static let usage = "usage: vmctl create [-b base | -i disk] [-s size] disk"

        func run() throws {
            do {
                try create()
            } catch let error as CreateError {
                Output.warn(error.message)
                if error.showUsage { Output.writeError(Self.usage + "\n") }
                throw ExitCode.failure
            }
        }

        struct CreateError: Error {
            var message: String
            var showUsage = false
        }

        func create() throws {
            var bytes: UInt64 = 0
            if let size { bytes = try Self.diskSize(size) }
            let (explicit, path) = DiskFormat.splitPrefix(disk)
            let format = explicit ?? (path.hasSuffix(".qcow2") ? .qcow2 : .raw)
            guard !path.isEmpty else { throw CreateError(message: "empty disk path", showUsage: true) }
            if let input {
                if base != nil { throw CreateError(message: "conflicting -b and -i arguments") }
                try convert(input, to: path, format: format, size: bytes)
                return
            }
            if base != nil && format != .qcow2 { throw CreateError(message: "base images require qcow2 disk format") }
            if bytes == 0 && base == nil {
                throw CreateError(message: "could not create \(path): missing size argument", showUsage: true)
            }
            var options = Qcow2CreateOptions(size: bytes)
            if let base {
                // The base is named as given; a relative name is resolved
                // against the new image's directory, as it will be when opened.
                let resolved = base.hasPrefix("/") ? base : Self.directory(of: path) + base
                let file = try Self.openImage(resolved, O_RDONLY, what: "base image")
                defer { close(file.fd) }
                guard try DiskFormat.detect(file) == .qcow2 else { throw CreateError(message: "base image is not a qcow2 file") }
                let header: Qcow2Header
                do { header = try Qcow2Image(file: file, readOnly: true, requireBacking: false).header } catch {
                    throw CreateError(message: "\(resolved): \(error)")
                }
                if bytes == 0 { bytes = header.size } else if bytes != header.size {
                    throw CreateError(message: "base size does not match requested size")
                }
                options = Qcow2CreateOptions(size: bytes, backingFile: base, backingFormat: .qcow2)
            }
            try make(path, format: format, options: options)
            Output.warn("\(format.rawValue) imagefile created")
        }

        /// Creates the file (O_EXCL, mode 0600) and writes an empty image.
        @discardableResult
        func make(_ path: String, format: DiskFormat, options: Qcow2CreateOptions) throws -> FDImageFile {
            let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                throw CreateError(message: "create imagefile operation failed: \(String(cString: strerror(errno)))")
            }
            let file = FDImageFile(fd: fd)
            do {
                switch format {
                case .raw:
                    guard ftruncate(fd, off_t(options.size)) == 0 else { throw DiskImageError.io(errno: errno, operation: "ftruncate") }
                case .qcow2:
                    try Qcow2Creator.create(options, on: file)
                }
            } catch {
                close(fd)
                unlink(path)
                throw CreateError(message: "create imagefile operation failed: \(error)")
            }
            return file
        }

        /// `-i`: copies the input's contents (through its backing chain)
        /// into a new image, skipping zero blocks, as vmctl's ctl_convert.
        func convert(_ input: String, to path: String, format: DiskFormat, size: UInt64) throws {
            let (inputFormat, inputPath) = DiskFormat.splitPrefix(input)
            let top = try Self.openImage(inputPath, O_RDONLY, what: "source image file")
            var files = [top]
            defer { for file in files { close(file.fd) } }
            let source: VirtualDisk
            do {
                let chain = try BackingChain.resolve(path: inputPath, file: top, format: inputFormat, writable: false) {
                    let file = try Self.openImage($0, O_RDONLY, what: "base image")
                    files.append(file)
                    return file
                }
                source = try BackingChain.open(chain.map { ($0.file, $0.format) }, readOnly: true)
            } catch let error as CreateError {
                throw error
            } catch {
                throw CreateError(message: "failed to open source image file: \(error)")
            }
            let wanted = size == 0 ? source.virtualSize : size
            guard wanted >= source.virtualSize else { throw CreateError(message: "size cannot be smaller than input disk size") }
            let megabyte: UInt64 = 1 << 20
            let (rounded, overflow) = wanted.addingReportingOverflow(megabyte - 1)
            guard !overflow else { throw CreateError(message: "size too large") }
            let dstSize = rounded / megabyte * megabyte
            let file = try make(path, format: format, options: Qcow2CreateOptions(size: dstSize))
            files.append(file)
            do {
                let target: VirtualDisk = format == .qcow2
                    ? try Qcow2Image(file: file, readOnly: false) : try RawDisk(file: file, readOnly: false)
                var buffer = [UInt8](repeating: 0, count: 64 * 1024)
                let zeroes = [UInt8](repeating: 0, count: buffer.count)
                var offset: UInt64 = 0
                while offset < source.virtualSize {
                    let n = Int(min(UInt64(buffer.count), source.virtualSize - offset))
                    try buffer.withUnsafeMutableBytes { try source.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<n]), at: offset) }
                    if buffer.withUnsafeBytes({ memcmp($0.baseAddress!, zeroes, n) }) != 0 {
                        try buffer.withUnsafeBytes { try target.write(from: UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: offset) }
                    }
                    offset += UInt64(n)
                }
                if let image = target as? Qcow2Image { try image.close() } else { try target.flush() }
            } catch {
                throw CreateError(message: "failed to write to destination: \(error)")
            }
            if dstSize != wanted { Output.warn("destination size rounded to \(dstSize / megabyte) megabytes") }
            Output.warn("\(format.rawValue) imagefile created")
        }

        static func openImage(_ path: String, _ flags: Int32, what: String) throws -> FDImageFile {
            let fd = open(path, flags | O_CLOEXEC)
            guard fd >= 0 else { throw CreateError(message: "failed to open \(what) \(path): \(String(cString: strerror(errno)))") }
            return FDImageFile(fd: fd)
        }

        static func directory(of path: String) -> String {
            guard let slash = path.lastIndex(of: "/") else { return "" }
            return String(path[...slash])
        }

        /// `-s size`: vmd's size suffixes; at least 1M, rounded down to whole megabytes.
        static func diskSize(_ text: String) throws -> UInt64 {
            let bytes: UInt64
            do { bytes = try ScaledSize.parse(text) } catch { throw CreateError(message: "invalid disk size: \(text)") }
            let megabyte: UInt64 = 1 << 20
            guard bytes >= megabyte else { throw CreateError(message: "disk size must be at least 1MB") }
            guard bytes <= UInt64(Int64.max) else { throw CreateError(message: "disk size too large") }
            let rounded = bytes / megabyte * megabyte
            if rounded != bytes { Output.warn("disk size rounded to \(ScaledSize.format(rounded))") }
            return rounded
        }
    }
}
