// The launch side of a disk: given the opened image and its path, read its
// header, follow its backing files (a relative name is resolved against the
// directory of the image that names it, as QEMU does), refuse loops and
// chains deeper than 16, and say which files to open read-only. Pure: the
// caller supplies the `open` function, so this runs in the parent (which
// may open files) and in tests alike. The device process only gets fds.

public struct ChainLink {
    public var path: String
    public var format: DiskFormat
    public var file: ImageFile

    public init(path: String, format: DiskFormat, file: ImageFile) {
        self.path = path
        self.format = format
        self.file = file
    }
}

public enum BackingChain {
    /// The deepest chain accepted: the image and at most 16 bases.
    public static let maxDepth = 16

    /// Resolves the chain under the image at `path` (open as `file`, in
    /// `format`, or detected by magic if nil). Returns the image itself
    /// first, then each base in order; bases are opened with `open`
    /// (read-only). Every qcow2 image's header and tables are checked;
    /// `writable` also checks that the top image may be written. Errors
    /// name the file they are about (`DiskFileError`).
    public static func resolve(path: String, file: ImageFile, format: DiskFormat?, writable: Bool,
                               open: (String) throws -> ImageFile) throws -> [ChainLink] {
        var links: [ChainLink] = []
        var seen: Set<String> = [normalize(path)]
        var current = ChainLink(path: path, format: format ?? .raw, file: file)
        if format == nil {
            do { current.format = try DiskFormat.detect(file) } catch let error as DiskImageError {
                throw DiskFileError(path: path, error: error)
            }
        }
        while true {
            links.append(current)
            guard current.format == .qcow2 else { return links }
            let header: Qcow2Header
            do {
                let image = try Qcow2Image(file: current.file, readOnly: true, requireBacking: false)
                header = image.header
                if links.count == 1 && writable, let refusal = Qcow2Image.writeRefusal(header) { throw refusal }
            } catch let error as DiskImageError {
                throw DiskFileError(path: current.path, error: error)
            }
            guard let name = header.backingFile else { return links }
            func fail(_ message: String) -> DiskFileError {
                DiskFileError(path: current.path, error: .invalid(message))
            }
            if name.split(separator: "/", omittingEmptySubsequences: false).contains("..") {
                throw fail("backing file name \(name) contains '..'")
            }
            guard links.count <= maxDepth else {
                throw fail("backing chain is deeper than \(maxDepth) images")
            }
            let basePath = name.hasPrefix("/") ? name : directory(of: current.path) + name
            guard seen.insert(normalize(basePath)).inserted else {
                throw fail("backing file \(basePath) makes a loop")
            }
            var baseFormat: DiskFormat?
            if let named = header.backingFormat {
                guard let known = DiskFormat(rawValue: named) else { throw fail("unsupported backing format \(named)") }
                baseFormat = known
            }
            let baseFile: ImageFile
            do { baseFile = try open(basePath) } catch {
                throw fail("cannot open backing file \(basePath): \(error)")
            }
            let detected: DiskFormat
            do { detected = try baseFormat ?? DiskFormat.detect(baseFile) } catch let error as DiskImageError {
                throw DiskFileError(path: basePath, error: error)
            }
            current = ChainLink(path: basePath, format: detected, file: baseFile)
        }
    }

    /// The directory part of `path` with a trailing slash ("" for a bare name).
    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[...slash])
    }

    /// `path` with empty and `.` components removed, for loop detection.
    static func normalize(_ path: String) -> String {
        let parts = path.split(separator: "/").filter { $0 != "." }
        return (path.hasPrefix("/") ? "/" : "") + parts.joined(separator: "/")
    }

    /// Builds the disk a device serves from the chain's files, bottom up:
    /// the top image is writable unless `readOnly`, bases never are.
    public static func open(_ links: [(file: ImageFile, format: DiskFormat)], readOnly: Bool) throws -> VirtualDisk {
        var below: VirtualDisk?
        for (index, link) in links.enumerated().reversed() {
            let top = index == 0
            switch link.format {
            case .raw: below = try RawDisk(file: link.file, readOnly: top ? readOnly : true)
            case .qcow2: below = try Qcow2Image(file: link.file, readOnly: top ? readOnly : true, backing: below)
            }
        }
        guard let disk = below else { throw DiskImageError.invalid("no image given") }
        return disk
    }
}
