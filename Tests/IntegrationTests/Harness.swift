import Foundation
import XCTest
import Glibc

/// Shared plumbing for the integration tests: where the repository and the
/// built binaries are, and a running `vmd` with its own config and socket.
enum Repo {
    static let root: URL = {
        var u = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { u.deleteLastPathComponent() }
        return u
    }()

    /// The build directory holding vmd/vmctl: the one this test bundle sits in.
    static let binDir: URL = {
        if let d = ProcessInfo.processInfo.environment["VMD_BIN_DIR"] { return URL(fileURLWithPath: d) }
        let exe = URL(fileURLWithPath: CommandLine.arguments.first ?? "")
        var dir = exe.deletingLastPathComponent()
        // .../debug/vmdPackageTests.xctest
        if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("vmd").path) {
            dir = root.appendingPathComponent(".build/debug")
        }
        return dir
    }()

    static var vmd: String { binDir.appendingPathComponent("vmd").path }
    static var vmctl: String { binDir.appendingPathComponent("vmctl").path }
    static var vmtestELF: String { root.appendingPathComponent("build/vmtest.elf").path }
}

func requireRoot() throws {
    guard getuid() == 0 else { throw XCTSkip("needs root (the daemon creates users, ptys, taps and KVM VMs)") }
}

func requireKVM() throws {
    guard access("/dev/kvm", R_OK | W_OK) == 0 else { throw XCTSkip("no usable /dev/kvm on this machine") }
}

func requireVmtest() throws {
    guard FileManager.default.fileExists(atPath: Repo.vmtestELF) else {
        throw XCTSkip("build/vmtest.elf is missing: run `make guests` first")
    }
}

func requireVmctl() throws {
    guard FileManager.default.isExecutableFile(atPath: Repo.vmctl) else {
        throw XCTSkip("vmctl is not built at \(Repo.vmctl)")
    }
}

/// Runs a command to completion; returns status and combined output.
@discardableResult
func runCommand(_ path: String, _ args: [String], env: [String: String] = [:], input: String? = nil,
         timeout: Double = 60) throws -> (status: Int32, out: String) {
    // A child that exits before reading its input must fail the test, not
    // kill the test runner with SIGPIPE.
    signal(SIGPIPE, SIG_IGN)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    var e = ProcessInfo.processInfo.environment
    for (k, v) in env { e[k] = v }
    p.environment = e
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    let inPipe = Pipe()
    p.standardInput = inPipe
    try p.run()
    if let input { inPipe.fileHandleForWriting.write(input.data(using: .utf8)!) }
    try? inPipe.fileHandleForWriting.close()
    final class Box: @unchecked Sendable { var data = Data() }
    let box = Box()
    let reader = DispatchQueue(label: "reader")
    let done = DispatchSemaphore(value: 0)
    reader.async {
        box.data = pipe.fileHandleForReading.readDataToEndOfFile()
        done.signal()
    }
    if done.wait(timeout: .now() + timeout) == .timedOut {
        p.terminate()
        _ = done.wait(timeout: .now() + 5)
        XCTFail("\(path) \(args) timed out after \(timeout) s")
    }
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: box.data, as: UTF8.self))
}

/// A `vmd -d` under test, with a private config, socket and log.
final class Daemon {
    let dir: URL
    let socket: String
    let config: String
    let logPath: String
    let process = Process()
    private let logHandle: FileHandle

    init(config text: String, extraArgs: [String] = [], env: [String: String] = [:],
         netns: String? = nil) throws {
        dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmd-test-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        chmod(dir.path, 0o755)
        socket = dir.appendingPathComponent("vmd.sock").path
        config = dir.appendingPathComponent("vm.conf").path
        logPath = dir.appendingPathComponent("vmd.log").path
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        FileManager.default.createFile(atPath: logPath, contents: nil)
        logHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        if let netns {
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            process.arguments = ["netns", "exec", netns, Repo.vmd, "-d", "-v", "-f", config, "-s", socket] + extraArgs
        } else {
            process.executableURL = URL(fileURLWithPath: Repo.vmd)
            process.arguments = ["-d", "-v", "-f", config, "-s", socket] + extraArgs
        }
        var e = ProcessInfo.processInfo.environment
        for (k, v) in env { e[k] = v }
        process.environment = e
        process.standardOutput = logHandle
        process.standardError = logHandle
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    var pid: Int32 { process.processIdentifier }

    /// Waits until the control socket exists (the tree is up).
    func waitReady(timeout: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if FileManager.default.fileExists(atPath: socket) && log.contains("startup complete") { return }
            if !process.isRunning { break }
            usleep(50_000)
        }
        XCTFail("vmd did not come up; log:\n\(log)")
        throw XCTSkip("daemon not ready")
    }

    /// Waits for `text` to show up in the log.
    @discardableResult
    func waitLog(_ text: String, timeout: Double = 30) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if log.contains(text) { return true }
            usleep(50_000)
        }
        return false
    }

    func vmctl(_ args: [String], timeout: Double = 60) throws -> (status: Int32, out: String) {
        try runCommand(Repo.vmctl, ["-s", socket] + args, timeout: timeout)
    }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    func stop(timeout: Double = 30) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning {
            XCTFail("vmd did not exit on SIGTERM; log:\n\(log)")
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        try? FileManager.default.removeItem(at: dir)
    }
}

/// Every process whose command line starts with `vmd` (titles included),
/// as (pid, ppid, user, args).
func vmdProcesses() -> [(pid: Int32, ppid: Int32, user: String, args: String)] {
    guard let out = try? runCommand("/bin/ps", ["-e", "-o", "pid=,ppid=,user=,args="]).out else { return [] }
    return out.split(separator: "\n").compactMap { line in
        let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: true)
        guard parts.count == 4, let pid = Int32(parts[0]), let ppid = Int32(parts[1]) else { return nil }
        let args = parts[3].trimmingCharacters(in: .whitespaces)
        guard args.hasPrefix("vmd") || args.contains("/vmd ") || args.hasSuffix("/vmd") else { return nil }
        return (pid, ppid, String(parts[2]), args)
    }
}

/// The descendants of `root` (inclusive).
func descendants(of root: Int32) -> [(pid: Int32, ppid: Int32, user: String, args: String)] {
    let all = vmdProcesses()
    var result = all.filter { $0.pid == root }
    var frontier: Set<Int32> = [root]
    while !frontier.isEmpty {
        let next = all.filter { frontier.contains($0.ppid) }
        result += next
        frontier = Set(next.map(\.pid))
    }
    return result
}

func procStatus(_ pid: Int32) -> [String: String] {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return [:] }
    var d: [String: String] = [:]
    for line in text.split(separator: "\n") {
        if let c = line.firstIndex(of: ":") {
            d[String(line[..<c])] = line[line.index(after: c)...].trimmingCharacters(in: .whitespaces)
        }
    }
    return d
}

func processExists(_ pid: Int32) -> Bool { kill(pid, 0) == 0 }
