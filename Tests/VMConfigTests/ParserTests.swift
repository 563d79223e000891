// The parser through its public API: the values it produces, the errors it
// reports, includes on disk, and hostile input.

import Foundation
import XCTest
@testable import VMConfig

final class ParserTests: XCTestCase {
    /// A directory holding the files the configurations below name (the
    /// parser resolves boot, initrd, disk and cdrom with realpath and
    /// refuses missing ones); the tests run inside it.
    private var root = ""
    private var savedDirectory = ""

    override func setUpWithError() throws {
        // Group names come from a fixture, not the host's /etc/iproute2/group.
        let groups = try XCTUnwrap(Bundle.module.url(forResource: "Golden", withExtension: nil))
        ConfigParser.linkGroupFiles = [groups.appendingPathComponent("link-groups").path]
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmconfig-files-\(UUID().uuidString)")
        for f in ["k", "bsd", "a", "a.img", "b.qcow2", "x.iso", "boot/vmlinuz", "boot/initrd", "var/vm/base.img", "var/vm/leaf.img"] {
            let url = dir.appendingPathComponent(f)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            FileManager.default.createFile(atPath: url.path, contents: nil)
        }
        root = realpath(dir.path, nil).map { p in defer { free(p) }; return String(cString: p) } ?? dir.path
        savedDirectory = FileManager.default.currentDirectoryPath
        XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(root))
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
    }

    override func tearDown() {
        if !savedDirectory.isEmpty { _ = FileManager.default.changeCurrentDirectoryPath(savedDirectory) }
    }

    /// Where a file named relative to the test directory resolves to.
    private func abs(_ name: String) -> String { root + "/" + name }

    private func parse(_ text: String, macros: [String: String] = [:]) -> Result<VMDConfiguration, ConfigErrors> {
        ConfigParser.parse(text: text, filename: "vm.conf", macros: macros)
    }

    private func config(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> VMDConfiguration {
        switch parse(text) {
        case .success(let config): return config
        case .failure(let errors):
            XCTFail("unexpected errors:\n\(errors)", file: file, line: line)
            throw errors
        }
    }

    private func errors(_ text: String, macros: [String: String] = [:]) -> [String] {
        switch parse(text, macros: macros) {
        case .success: return []
        case .failure(let errors): return errors.errors.map(\.description)
        }
    }

    func testVMValues() throws {
        let config = try config("""
            vm "web" {
            	memory 1536M
            	cpus 2
            	boot "boot/vmlinuz"
            	initrd "boot/initrd"
            	cmdline "console=ttyS0"
            	disk "a.img"
            	disk "b.qcow2" format qcow2
            	interface tap3 { switch "sw", locked lladdr fe:e1:ba:d0:00:01, group vms, rdomain 7, down }
            	interfaces 2
            	owner daemon:staff
            	disable
            }
            switch "sw" { interface br0 }
            """)
        let vm = try XCTUnwrap(config.vm(named: "web"))
        XCTAssertEqual(vm.memoryBytes, 1536 << 20)
        XCTAssertEqual(vm.effectiveCPUs, 2)
        XCTAssertEqual(vm.bootPath, abs("boot/vmlinuz"))
        XCTAssertEqual(vm.initrd, abs("boot/initrd"))
        XCTAssertEqual(vm.cmdline, "console=ttyS0")
        XCTAssertEqual(vm.disks.map(\.path), [abs("a.img"), abs("b.qcow2")])
        XCTAssertEqual(vm.disks.map(\.format), [nil, .qcow2])
        XCTAssertEqual(vm.disks.map(\.location.line), [7, 8])
        XCTAssertFalse(vm.enabled)
        XCTAssertEqual(vm.owner, Owner(user: "daemon", group: "staff"))
        XCTAssertEqual(vm.interfaceCount, 2)
        XCTAssertEqual(vm.effectiveInterfaceCount, 2)
        let interface = try XCTUnwrap(vm.interfaces.first)
        XCTAssertEqual(interface.name, "tap3")
        XCTAssertEqual(interface.switchName, "sw")
        XCTAssertEqual(interface.lladdr?.bytes, [0xfe, 0xe1, 0xba, 0xd0, 0x00, 0x01])
        XCTAssertTrue(interface.lockedLladdr)
        XCTAssertEqual(interface.group, "vms")
        XCTAssertEqual(interface.rdomain, 7)
        XCTAssertFalse(interface.up)
        XCTAssertEqual(interface.location, SourceLocation(file: "vm.conf", line: 9))
        XCTAssertEqual(vm.location, SourceLocation(file: "vm.conf", line: 1))
    }

    func testDefaults() throws {
        let config = try config("vm \"v\" { boot \"k\" }")
        let vm = try XCTUnwrap(config.vms.first)
        XCTAssertNil(vm.memoryBytes)
        XCTAssertEqual(vm.effectiveMemoryBytes, 512 << 20)
        XCTAssertEqual(vm.effectiveCPUs, 1)
        XCTAssertTrue(vm.enabled)
        XCTAssertNil(vm.parent)
        XCTAssertEqual(config.effectiveLocalPrefix, IPPrefix(address: "100.64.0.0", length: 10))
        XCTAssertNil(config.socketOwner)
        XCTAssertNil(config.staggeredStart)
        XCTAssertTrue(config.warnings.isEmpty)
    }

    func testInstanceSyntaxIsParentFirst() throws {
        // vm.conf(5): `vm parent instance name`.
        let config = try config("vm \"base\" { memory 1G }\nvm \"base\" instance \"copy\" { memory 2G }")
        XCTAssertEqual(config.vms.map(\.name), ["base", "copy"])
        XCTAssertEqual(config.vms.last?.parent, "base")
    }

    func testInstanceResolution() throws {
        let config = try config("""
            vm "base" {
            	memory 2G
            	cpus 2
            	boot "boot/vmlinuz"
            	cmdline "console=ttyS0"
            	disk "var/vm/base.img"
            	interface tap1 { switch "sw" }
            	interface { group vms }
            	owner daemon:staff
            	allow instance { memory, instance }
            }
            vm "base" instance "mid" {
            	memory 1G
            	interface { lladdr fe:e1:ba:d0:00:07 }
            	owner :root
            }
            vm "mid" instance "leaf" {
            	disk "var/vm/leaf.img"
            	disable
            }
            switch "sw" { interface br0 }
            """)
        let base = try XCTUnwrap(config.vm(named: "base"))
        XCTAssertEqual(config.resolved(base), base, "a VM that is no instance resolves to itself")
        let leaf = config.resolved(try XCTUnwrap(config.vm(named: "leaf")))
        XCTAssertEqual(leaf.name, "leaf")
        XCTAssertEqual(leaf.parent, "mid")
        XCTAssertFalse(leaf.enabled)
        XCTAssertEqual(leaf.memoryBytes, 1 << 30, "from mid, which overrides base")
        XCTAssertEqual(leaf.cpus, 2)
        XCTAssertEqual(leaf.bootPath, abs("boot/vmlinuz"))
        XCTAssertEqual(leaf.cmdline, "console=ttyS0")
        XCTAssertEqual(leaf.disks.map(\.path), [abs("var/vm/leaf.img")], "disks are never inherited")
        XCTAssertEqual(leaf.interfaces.map(\.lladdr?.description), ["fe:e1:ba:d0:00:07", nil])
        XCTAssertEqual(leaf.interfaces.map(\.group), [nil, "vms"], "the second interface is base's")
        XCTAssertEqual(leaf.owner, Owner(user: "daemon", group: "root"))
        XCTAssertEqual(leaf.allowInstance.memory, true, "base allows instances of instances")
        let mid = config.resolved(try XCTUnwrap(config.vm(named: "mid")))
        XCTAssertEqual(mid.disks, [])
        XCTAssertEqual(mid.interfaces.first?.name, nil)
    }

    func testGlobals() throws {
        let config = try config("""
            local prefix 10.1.0.0/16
            local inet6 prefix FD00:0000::/48
            socket owner :nogroup
            staggered start parallel 3 delay 15
            """)
        XCTAssertEqual(config.localPrefix, IPPrefix(address: "10.1.0.0", length: 16))
        XCTAssertEqual(config.localInet6Prefix, IPPrefix(address: "fd00::", length: 48))
        XCTAssertTrue(config.localInet6)
        XCTAssertEqual(config.socketOwner, Owner(user: nil, group: "nogroup"))
        XCTAssertEqual(config.staggeredStart, StaggeredStart(parallel: 3, delaySeconds: 15))
    }

    func testMacroOverridesFromCommandLine() throws {
        let text = "mem = 1G\nvm \"v\" { memory $mem }"
        XCTAssertEqual(try config(text).vms.first?.memoryBytes, 1 << 30)
        guard case .success(let overridden) = parse(text, macros: ["mem": "3G"]) else {
            return XCTFail("override did not parse")
        }
        XCTAssertEqual(overridden.vms.first?.memoryBytes, 3 << 30)
        // A -D macro needs no definition in the file.
        guard case .success(let only) = parse("vm \"v\" { boot $k }", macros: ["k": "bsd"]) else {
            return XCTFail("-D macro not visible")
        }
        XCTAssertEqual(only.vms.first?.bootPath, abs("bsd"))
    }

    func testMacroDefinitionArgument() {
        XCTAssertEqual(ConfigParser.macroDefinition("a=b").map { [$0.name, $0.value] }, ["a", "b"])
        XCTAssertNil(ConfigParser.macroDefinition("cmd=a=b"), "name 'cmd=a' is not a macro name")
        XCTAssertEqual(ConfigParser.macroDefinition("empty=").map { [$0.name, $0.value] }, ["empty", ""])
        XCTAssertNil(ConfigParser.macroDefinition("novalue"))
        XCTAssertNil(ConfigParser.macroDefinition("=x"))
        XCTAssertNil(ConfigParser.macroDefinition("memory=1G"), "keywords are not macro names")
        XCTAssertNil(ConfigParser.macroDefinition("a b=1"))
    }

    func testWarnings() throws {
        let config = try config("unused = 1\nvm \"v\" { memory 1048577 }")
        XCTAssertEqual(config.warnings.map(\.description),
                       ["vm.conf:2: memory size rounded to 1M", "vm.conf:1: macro 'unused' not used"])
    }

    func testAllErrorsOfAFileAreReported() {
        let found = errors("""
            vm "a" {
            	memory 0
            	cpus 99
            	nonsense here
            	disk "a" format zip
            }
            garbage
            vm "b" { interfaces 7 }
            """)
        XCTAssertEqual(found, [
            "vm.conf:2: memory size must be at least 1M: 0",
            "vm.conf:3: invalid cpus: 99 (expected 1 to 64)",
            "vm.conf:4: syntax error: expected a vm option (allow instance, boot, cdrom, cmdline, cpus, disable, "
                + "disk, enable, initrd, interface, interfaces, local interface, memory, owner), found \"nonsense\"",
            "vm.conf:5: unrecognized disk format zip (expected raw or qcow2)",
            "vm.conf:7: syntax error: expected vm, switch, vhost-user, include, local, socket owner, "
                + "staggered start or a macro definition, found \"garbage\"",
            "vm.conf:8: too many interfaces: 7 (at most 4)",
        ])
    }

    /// Issue 9: files that do not exist and owners that do not exist are
    /// errors with file:line, as in vmd (vmd -n, start-up and reload alike).
    func testMissingFilesAndUnknownOwnersAreErrors() throws {
        let found = errors("""
            socket owner nosuchuser9:nosuchgroup9
            vm "a" {
            	boot "/nonexistent/kernel"
            	initrd "missing.img"
            	disk "/nonexistent/disk.img"
            	cdrom "/nonexistent/x.iso"
            	owner nosuchuser9
            }
            vm "b" { boot "k"
            	owner :nosuchgroup9 }
            vm "c" { boot "k"
            	owner 4000 }
            """)
        XCTAssertEqual(found, [
            "vm.conf:1: failed to get user: nosuchuser9",
            "vm.conf:3: boot /nonexistent/kernel: No such file or directory",
            "vm.conf:4: initrd missing.img: No such file or directory",
            "vm.conf:5: disk /nonexistent/disk.img: No such file or directory",
            "vm.conf:6: cdrom /nonexistent/x.iso: No such file or directory",
            "vm.conf:7: failed to get user: nosuchuser9",
            "vm.conf:10: failed to get group: nosuchgroup9",
        ])
        XCTAssertEqual(errors("socket owner :nosuchgroup9"), ["vm.conf:1: failed to get group: nosuchgroup9"])
        // Existing names and plain ids are fine; relative paths resolve.
        let ok = try config("socket owner root:root\nvm \"v\" { boot \"./boot/../k\"\n owner 4000:4001 }")
        XCTAssertEqual(ok.vms.first?.bootPath, abs("k"))
        XCTAssertEqual(ok.vms.first?.owner, Owner(user: "4000", group: "4001"))
    }

    func testErrorsDoNotLeakPartialVMs() {
        XCTAssertEqual(errors("vm \"a\" { memory 1G }\nvm \"a\" { memory 2G }"),
                       ["vm.conf:2: vm \"a\" is already defined at vm.conf:1"])
    }

    func testUnsupportedFeatures() throws {
        let config = try config("""
            switch "sw" { interface br0 }
            vm "plain" { boot "k"
            	disk "a.img" format raw
            	interface tap0 }
            vm "fancy" {
            	interface { switch "sw" }
            	local interface
            	interface { locked lladdr }
            	interface { group vms rdomain 1 }
            	disk "b.qcow2" format qcow2
            	boot device disk
            	cdrom "x.iso"
            }
            vm "iso-with-kernel" { boot "k"
            	cdrom "x.iso" }
            local inet6
            """)
        XCTAssertEqual(try XCTUnwrap(config.vm(named: "plain")).unsupportedFeatures, [])
        // Switches, local interfaces, groups and rdomains are supported now.
        XCTAssertEqual(unsupportedFeatures(of: try XCTUnwrap(config.vm(named: "fancy"))),
                       [])
        XCTAssertEqual(try XCTUnwrap(config.vm(named: "iso-with-kernel")).unsupportedFeatures, [])
        // `local inet6` too (vionet answers router solicitations).
        XCTAssertEqual(unsupportedStatements(of: config).map(\.description), [])
    }

    func testSizes() {
        XCTAssertEqual(Validate.scaledSize("1"), 1)
        XCTAssertEqual(Validate.scaledSize("1k"), 1024)
        XCTAssertEqual(Validate.scaledSize("1.5K"), 1536)
        XCTAssertEqual(Validate.scaledSize("15E"), 15 << 60)
        XCTAssertNil(Validate.scaledSize("16E"), "16 EiB overflows 64 bits")
        XCTAssertEqual(Validate.scaledSize("1E"), 1 << 60)
        XCTAssertEqual(Validate.scaledSize("18446744073709551615"), UInt64.max)
        XCTAssertNil(Validate.scaledSize("18446744073709551616"))
        XCTAssertNil(Validate.scaledSize("1.5"), "a fraction needs a unit")
        XCTAssertNil(Validate.scaledSize("G"))
        XCTAssertNil(Validate.scaledSize("1GB"))
        XCTAssertNil(Validate.scaledSize(".5G"))
        XCTAssertNil(Validate.scaledSize("1..5G"))
        XCTAssertEqual(Validate.formatSize(1 << 30), "1G")
        XCTAssertEqual(Validate.formatSize(1536 << 20), "1536M")
        XCTAssertEqual(Validate.formatSize(1000), "1000")
    }

    func testLocalPrefixAsVmdParsesIt() throws {
        // vmd's parse_prefix4: no length is /16.
        let config = try config("local prefix 10.7.0.0")
        XCTAssertEqual(config.localPrefix, IPPrefix(address: "10.7.0.0", length: 16))
    }

    func testPrintedFormParsesBack() throws {
        let text = """
            local prefix 10.0.0.0/8
            socket owner "daemon:bin"
            switch "s" { interface br0
            	group g
            	rdomain 4 }
            vm "q\\"uote" { cmdline "say \\"hi\\"" 
            	boot "k" }
            vm "q\\"uote" instance "i" { owner 0 }
            """
        // A quote in a vm name is invalid, but in a cmdline it must survive.
        XCTAssertFalse(errors(text).isEmpty)
        let valid = text.replacingOccurrences(of: "q\\\"uote", with: "quote")
        let first = try config(valid)
        let printed = first.printed()
        guard case .success(let second) = ConfigParser.parse(text: printed, filename: "printed") else {
            return XCTFail("printed form does not parse:\n\(printed)")
        }
        XCTAssertEqual(second.printed(), printed)
        XCTAssertEqual(second.vms.first?.cmdline, "say \"hi\"")
        XCTAssertEqual(second.vms.map(\.name), first.vms.map(\.name))
    }

    func testJoinedStringsAreBounded() {
        let big = String(repeating: "x", count: 5000)
        let uses = String(repeating: " $big", count: 300)
        let found = errors("big = \"\(big)\"\nvm \"a\" { disk\(uses) }\nvm \"b\" { cpus 0 }")
        XCTAssertEqual(found, ["vm.conf:2: string too long", "vm.conf:3: invalid cpus: 0 (expected 1 to 64)"])
    }

    func testQuotingSurvivesBackslashes() throws {
        for text in [#"a\b"#, #"a\"b"#, #"a\ b"#, "a\\\tb", #"\\x"#, #"C:\path\n"#] {
            let printed = quoted(text)
            let parsed = try config("vm \"v\" { boot \"k\"\ncmdline \(printed) }")
            XCTAssertEqual(parsed.vms.first?.cmdline, text, "printed as \(printed)")
        }
    }

    // MARK: files and includes

    private func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("vmconfig-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    func testMissingFile() {
        guard case .failure(let errors) = ConfigParser.parse(file: "/nonexistent/vm.conf") else {
            return XCTFail("a missing file parsed")
        }
        XCTAssertEqual(errors.description, "/nonexistent/vm.conf: failed to open: No such file or directory")
    }

    func testIncludeRelativeToIncludingFile() throws {
        let dir = try temporaryDirectory()
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("sub"),
                                                withIntermediateDirectories: true)
        try "include \"sub/a.conf\"\nvm \"top\" { memory $m }\n"
            .write(to: dir.appendingPathComponent("vm.conf"), atomically: true, encoding: .utf8)
        try "m = 2G\ninclude \"b.conf\"\n"
            .write(to: dir.appendingPathComponent("sub/a.conf"), atomically: true, encoding: .utf8)
        try "vm \"deep\" {\n memory 0 }\n"
            .write(to: dir.appendingPathComponent("sub/b.conf"), atomically: true, encoding: .utf8)
        let path = dir.appendingPathComponent("vm.conf").path
        guard case .failure(let errors) = ConfigParser.parse(file: path) else { return XCTFail("parsed") }
        XCTAssertEqual(errors.description, "b.conf:2: memory size must be at least 1M: 0")
        try "vm \"deep\" { memory 1G }\n"
            .write(to: dir.appendingPathComponent("sub/b.conf"), atomically: true, encoding: .utf8)
        guard case .success(let config) = ConfigParser.parse(file: path) else { return XCTFail("failed") }
        XCTAssertEqual(config.vms.map(\.name), ["deep", "top"])
        XCTAssertEqual(config.vms.last?.memoryBytes, 2 << 30)
    }

    func testIncludeLoopIsAnError() throws {
        let dir = try temporaryDirectory()
        try "include \"b.conf\"\n".write(to: dir.appendingPathComponent("a.conf"), atomically: true, encoding: .utf8)
        try "vm \"x\" { memory 1G }\ninclude \"a.conf\"\n"
            .write(to: dir.appendingPathComponent("b.conf"), atomically: true, encoding: .utf8)
        guard case .failure(let errors) = ConfigParser.parse(file: dir.appendingPathComponent("a.conf").path) else {
            return XCTFail("an include loop parsed")
        }
        XCTAssertEqual(errors.errors.map(\.description),
                       ["b.conf:2: include \"a.conf\": include loop (the file is already being read)"])
    }

    func testDeepIncludeChainStops() throws {
        let dir = try temporaryDirectory()
        // Forty distinct files, each including the next: no loop, too deep.
        for index in 0..<40 {
            try "include \"f\(index + 1).conf\"\n"
                .write(to: dir.appendingPathComponent("f\(index).conf"), atomically: true, encoding: .utf8)
        }
        guard case .failure(let errors) = ConfigParser.parse(file: dir.appendingPathComponent("f0.conf").path) else {
            return XCTFail("a 40-deep include chain parsed")
        }
        XCTAssertEqual(errors.errors.count, 1)
        XCTAssertTrue(errors.description.hasSuffix("includes nested too deeply (at most 16)"), errors.description)
    }

    func testHugeAndSpecialFilesAreRefused() throws {
        guard case .failure(let dev) = ConfigParser.parse(file: "/dev/zero") else { return XCTFail("/dev/zero") }
        XCTAssertEqual(dev.description, "/dev/zero: failed to open: not a regular file")
        let dir = try temporaryDirectory()
        let big = dir.appendingPathComponent("big.conf")
        try Data(repeating: UInt8(ascii: "\n"), count: ConfigLimits.maxFileSize + 1).write(to: big)
        guard case .failure(let errors) = ConfigParser.parse(file: big.path) else { return XCTFail("huge file") }
        XCTAssertTrue(errors.description.contains("file too large"), errors.description)
    }

    /// Random statements built from real vm.conf words must produce a
    /// result, never a trap, and every error must carry a line.
    func testRandomConfigurationsNeverTrap() {
        var generator = SplitMix64(seed: 42)
        let words = ["vm", "\"a\"", "{", "}", "\n", "memory", "1G", "disk", "\"/d\"", "format", "qcow2",
                     "interface", "switch", "lladdr", "fe:e1:ba:d0:00:01", "local", "instance", "allow", ",",
                     "boot", "device", "cdrom", "owner", "joe:g", "$m", "m", "=", "include", "\"x\"", "cpus",
                     "99999999999999999999", "-", "\"", "#", "\\", "rdomain", "group", "locked", "interfaces", "4"]
        for _ in 0..<300 {
            let count = Int(generator.next() % 60)
            let text = (0..<count).map { _ in words[Int(generator.next() % UInt64(words.count))] }
                .joined(separator: " ")
            switch parse(text, macros: ["m": "memory"]) {
            case .success(let config):
                _ = config.printed()
            case .failure(let errors):
                XCTAssertFalse(errors.errors.isEmpty)
                for error in errors.errors { XCTAssertGreaterThanOrEqual(error.line, 1, "\(error) in:\n\(text)") }
            }
        }
    }
}
