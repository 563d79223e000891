import Foundation
import XCTest
import Glibc

/// Disk images with the pattern vmtest checks, and network namespaces.
enum Guest {
    static let sector = 512

    /// `sectors` sectors; sector n begins with "vmdisk <n>\n", zero padded.
    static func makeDisk(_ path: String, sectors: Int = 8192) throws {
        var data = Data(count: sectors * sector)
        data.withUnsafeMutableBytes { (p: UnsafeMutableRawBufferPointer) in
            for n in 0..<sectors {
                let s = Array("vmdisk \(n)\n".utf8)
                for (i, b) in s.enumerated() { p[n * sector + i] = b }
            }
        }
        try data.write(to: URL(fileURLWithPath: path))
    }

    /// Sectors 2048..2175 must hold what vmtest writes.
    static func verifyWrittenSectors(_ path: String) throws -> String? {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        for n in 2048..<2176 {
            let start = n * sector
            guard data.count >= start + sector else { return "image too short" }
            var expected = [UInt8](repeating: 0, count: sector)
            let text = Array("vmtest sector \(n)\n".utf8)
            expected.replaceSubrange(0..<text.count, with: text)
            if Array(data[start..<(start + sector)]) != expected { return "sector \(n) does not hold what the guest wrote" }
        }
        return nil
    }

    /// `vmtest: <check> ok ...` lines, by check name.
    static func results(_ console: String) -> [String: Bool] {
        var r: [String: Bool] = [:]
        for line in console.split(whereSeparator: \.isNewline) {
            guard let range = line.range(of: "vmtest: ") else { continue }
            let words = line[range.upperBound...].split(separator: " ")
            guard words.count >= 2 else { continue }
            if words[1] == "ok" { r[String(words[0])] = true }
            if words[1] == "FAIL" { r[String(words[0])] = false }
        }
        return r
    }
}

/// A network namespace made by the test, removed when it ends. Nothing is
/// routed out of it: the guest's gateway is the tap's host side inside it.
final class NetNamespace {
    let name: String

    init() throws {
        name = "vmdtest\(getpid())\(Int.random(in: 0..<10000))"
        let r = try runCommand("/usr/sbin/ip", ["netns", "add", name])
        guard r.status == 0 else { throw XCTSkip("cannot create a network namespace: \(r.out)") }
        _ = try runCommand("/usr/sbin/ip", ["-n", name, "link", "set", "lo", "up"])
    }

    /// Gives the tap the gateway address once it exists.
    func configureTap(_ tap: String, address: String, timeout: Double = 20) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let r = try? runCommand("/usr/sbin/ip", ["-n", name, "link", "show", tap]), r.status == 0 {
                _ = try? runCommand("/usr/sbin/ip", ["-n", name, "addr", "add", address, "dev", tap])
                _ = try? runCommand("/usr/sbin/ip", ["-n", name, "link", "set", tap, "up"])
                return true
            }
            usleep(20_000)
        }
        return false
    }

    deinit {
        _ = try? runCommand("/usr/sbin/ip", ["netns", "delete", name])
    }
}
