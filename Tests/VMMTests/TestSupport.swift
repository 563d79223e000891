import Foundation
import XCTest
@testable import VMM

/// Shared helpers: guest binaries built on demand, KVM presence checks.
enum TestSupport {
    /// shared/probes beside the repository (as CI lays it out), or the machine's.
    static var probes: String? {
        [repositoryRoot + "/../shared/probes", "/work/shared/probes"]
            .first { FileManager.default.fileExists(atPath: $0 + "/multiboot_hello.S") }
    }
    static let repositoryRoot: String = {
        // Tests/VMMTests/TestSupport.swift -> repository root.
        var url = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var kvmAvailable: Bool { FileManager.default.isReadableFile(atPath: "/dev/kvm") }
    static var isPVM: Bool { FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") }

    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("vmmtests-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @discardableResult
    static func run(_ arguments: [String], in directory: URL? = nil) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = directory }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw VMMError("\(arguments.joined(separator: " ")) failed: \(output)")
        }
        return output
    }

    /// Builds shared/probes/multiboot_hello.S (or, without shared/, the same
    /// program kept below) into a temporary ELF, as kvm-here.md says.
    static func buildMultibootHello() throws -> String {
        let dir = try temporaryDirectory()
        var source = dir.appendingPathComponent("multiboot_hello.S").path
        var script = dir.appendingPathComponent("multiboot_hello.ld").path
        if let probes {
            source = probes + "/multiboot_hello.S"
            script = probes + "/multiboot_hello.ld"
        } else {
            try helloSource.write(toFile: source, atomically: true, encoding: .utf8)
            try helloScript.write(toFile: script, atomically: true, encoding: .utf8)
        }
        let out = dir.appendingPathComponent("hello.elf").path
        try run(["gcc", "-m32", "-nostdlib", "-ffreestanding", "-no-pie", "-static",
                 "-Wl,-T,\(script)", "-o", out, source])
        return out
    }

    static let helloSource = """
        .section .multiboot
        .align 4
        .long 0x1BADB002
        .long 0x00000003
        .long -(0x1BADB002 + 0x00000003)
        .section .text
        .code32
        .global _start
        _start:
          mov $msg, %esi
        1: lodsb
          test %al, %al
          jz 2f
          mov $0x3f8, %dx
          out %al, %dx
          jmp 1b
        2: mov $0x604, %dx
          mov $0x2000, %ax
          out %ax, %dx
        3: hlt
          jmp 3b
        .section .data
        msg: .asciz "vmtest: hello\\nvmtest summary: passed=1 failed=0\\n"

        """
    static let helloScript = """
        ENTRY(_start)
        SECTIONS { . = 0x100000; .text : { *(.multiboot) *(.text) } .data : { *(.data) } .bss : { *(.bss) } }

        """

    static func writeFile(_ bytes: [UInt8], name: String = "kernel") throws -> String {
        let url = try temporaryDirectory().appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url.path
    }
}

/// Runs a VM until it exits on its own or `timeout` passes; returns the exit
/// reason (nil on timeout) and everything written to the console.
final class GuestRun {
    let vm: VirtualMachine
    private let lock = NSLock()
    private var output: [UInt8] = []
    private let done = DispatchSemaphore(value: 0)
    private var reason: VMExitReason?

    init(spec: VMSpec) throws {
        vm = try VirtualMachine(spec: spec)
        vm.setConsoleObserver { [weak self] bytes in
            guard let self else { return }
            self.lock.lock(); self.output += bytes; self.lock.unlock()
        }
    }

    var console: String {
        lock.lock(); defer { lock.unlock() }
        return String(decoding: output, as: UTF8.self)
    }

    func run(timeout: TimeInterval) throws -> VMExitReason? {
        try vm.start { [weak self] reason in
            guard let self else { return }
            self.lock.lock(); self.reason = reason; self.lock.unlock()
            self.done.signal()
        }
        let finished = done.wait(timeout: .now() + timeout) == .success
        vm.stop()
        lock.lock(); defer { lock.unlock() }
        return finished ? reason : nil
    }
}
