// Reading configuration files with plain libc: this module is linked into
// the vmd binary, which must not load Foundation.

#if canImport(Glibc)
import Glibc
#endif

enum ConfigFile {
    /// The whole file, or a reason in words (`No such file or directory`,
    /// `file too large`). Reads at most ConfigLimits.maxFileSize bytes, so a
    /// device or a huge file cannot exhaust memory.
    static func read(_ path: String) -> Result<[UInt8], Reason> {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        if fd < 0 { return .failure(Reason(errnoText())) }
        defer { close(fd) }
        var info = stat()
        if fstat(fd, &info) != 0 { return .failure(Reason(errnoText())) }
        if (info.st_mode & S_IFMT) == S_IFDIR { return .failure(Reason(String(cString: strerror(EISDIR)))) }
        if (info.st_mode & S_IFMT) != S_IFREG { return .failure(Reason("not a regular file")) }

        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                return .failure(Reason(errnoText()))
            }
            if count == 0 { break }
            contents.append(contentsOf: chunk[0..<count])
            if contents.count > ConfigLimits.maxFileSize {
                return .failure(Reason("file too large (more than \(ConfigLimits.maxFileSize) bytes)"))
            }
        }
        return .success(contents)
    }

    /// The path with symlinks and `..` resolved, to recognise a file that
    /// includes itself; nil if it does not exist.
    static func canonicalPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// `dir/name` for a relative include; absolute names stay as they are.
    static func resolve(_ name: String, relativeTo directory: String?) -> String {
        guard let directory, !name.hasPrefix("/"), !directory.isEmpty else { return name }
        return directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    /// The directory part of a path ("" for a bare file name).
    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        if slash == path.startIndex { return "/" }
        return String(path[..<slash])
    }

    private static func errnoText() -> String {
        String(cString: strerror(errno))
    }
}
