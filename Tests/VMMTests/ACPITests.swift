import Foundation
import XCTest
@testable import VMM

/// The ACPI tables the VMM builds, checked by a client no one here wrote:
/// ACPICA's `iasl -d` (disassembles each table, verifies checksums and
/// lengths) and `acpiexec` (loads them into the interpreter and evaluates
/// `\_S5` and the PCI root's `_PRT`), from Debian's acpica-tools.
final class ACPITests: XCTestCase {
    /// Writes the tables as placed for direct boot, one `.dat` file each.
    func dumpTables(cpus: Int, devices: [ACPIDeviceDescription] = []) throws -> (URL, [String: [UInt8]]) {
        let dir = try TestSupport.temporaryDirectory()
        let acpi = ACPITables(cpus: cpus, devices: devices)
        let (rsdp, tables) = acpi.place(tablesAt: BootLayout.acpiTables)
        var files: [String: [UInt8]] = ["RSDP": rsdp]
        for t in acpi.layout { files[t.signature] = Array(tables[t.offset..<(t.offset + t.length)]) }
        for (name, bytes) in files {
            try Data(bytes).write(to: dir.appendingPathComponent(name.lowercased() + ".dat"))
        }
        return (dir, files)
    }

    func requireTool(_ name: String) throws {
        guard (try? TestSupport.run(["which", name])) != nil else {
            throw XCTSkip("\(name) is not installed (Debian acpica-tools; .ci/install-deps installs it)")
        }
    }

    func testIaslDisassemblesEveryTableCleanly() throws {
        try requireTool("iasl")
        for cpus in [1, 2, 64] {
            let (dir, files) = try dumpTables(cpus: cpus)
            // iasl cannot disassemble a bare RSDP file: its two checksums are checked here.
            let rsdp = files["RSDP"]!
            XCTAssertEqual(rsdp.count, 36)
            XCTAssertEqual(rsdp[0..<20].reduce(UInt8(0), &+), 0)
            XCTAssertEqual(rsdp.reduce(UInt8(0), &+), 0)
            XCTAssertEqual(ByteImage(rsdp).u32(16).map(UInt64.init), BootLayout.acpiTables + UInt64(ACPITables(cpus: cpus).layout.first { $0.signature == "RSDT" }!.offset))
            for name in files.keys.sorted() where name != "RSDP" {
                let file = name.lowercased() + ".dat"
                let output = try TestSupport.run(["iasl", "-d", file], in: dir)
                for bad in ["Error", "Warning", "Invalid", "checksum", "Checksum"] where output.contains(bad) {
                    // "Table Checksum : 0x..  /* Incorrect checksum */" or an iasl error.
                    if bad.lowercased() == "checksum" && !output.lowercased().contains("incorrect checksum") { continue }
                    XCTFail("\(cpus) CPUs, \(name): iasl says \(bad):\n\(output)")
                }
                let dsl = try String(contentsOf: dir.appendingPathComponent(name.lowercased() + ".dsl"), encoding: .utf8)
                XCTAssertFalse(dsl.lowercased().contains("incorrect checksum"), "\(name):\n\(dsl)")
            }
            let madt = try String(contentsOf: dir.appendingPathComponent("apic.dsl"), encoding: .utf8)
            XCTAssertEqual(madt.components(separatedBy: "Subtable Type : 00 [Processor Local APIC]").count - 1, cpus, madt)
            XCTAssertTrue(madt.contains("Subtable Type : 01 [I/O APIC]"), madt)
            let fadt = try String(contentsOf: dir.appendingPathComponent("facp.dsl"), encoding: .utf8)
            XCTAssertTrue(fadt.contains("SCI Interrupt : 0009"), fadt)
            XCTAssertTrue(fadt.contains("PM1A Event Block Address : 00000600"), fadt)
            XCTAssertTrue(fadt.contains("PM1A Control Block Address : 00000604"), fadt)
            XCTAssertTrue(fadt.contains("Address : 0000000000000CF9"), fadt)
            let dsdt = try String(contentsOf: dir.appendingPathComponent("dsdt.dsl"), encoding: .utf8)
            XCTAssertTrue(dsdt.contains("Name (\\_S5, Package (0x04)"), dsdt)
            XCTAssertTrue(dsdt.contains("EisaId (\"PNP0A03\")"), dsdt)
            XCTAssertTrue(dsdt.contains("EisaId (\"PNP0501\")"), dsdt)
        }
    }

    /// The disassembled DSDT compiles again with no errors and no warnings
    /// (iasl's compiler checks more than its disassembler: _HID with _ADR, ...).
    func testDisassembledDSDTRecompilesWithoutWarnings() throws {
        try requireTool("iasl")
        let (dir, _) = try dumpTables(cpus: 4, devices: [
            ACPIDeviceDescription(name: "VR00", hid: .string("LNRO0005"), uid: 0,
                                  resources: [.memory32Fixed(0xD000_0000, length: 0x200), .interrupt(12, level: false)]),
        ])
        _ = try TestSupport.run(["iasl", "-d", "dsdt.dat"], in: dir)
        let output = try TestSupport.run(["iasl", "-p", "recompiled", "dsdt.dsl"], in: dir)
        XCTAssertTrue(output.contains("Compilation successful. 0 Errors, 0 Warnings"), output)
        let dsl = try String(contentsOf: dir.appendingPathComponent("dsdt.dsl"), encoding: .utf8)
        XCTAssertTrue(dsl.contains("Name (_HID, \"LNRO0005\")"), dsl)
        XCTAssertTrue(dsl.contains("Memory32Fixed (ReadWrite,"), dsl)
        XCTAssertTrue(dsl.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )"), dsl)
    }

    func testAcpiexecEvaluatesS5AndPRT() throws {
        try requireTool("acpiexec")
        let (dir, _) = try dumpTables(cpus: 2)
        let output = try TestSupport.run(["acpiexec", "-b", "evaluate \\_S5; evaluate \\_SB.PCI0._PRT; evaluate \\_SB.COM1._CRS",
                                          "dsdt.dat", "facp.dat", "apic.dat"], in: dir)
        // acpiexec's own hardware self-tests (aetests.c) poke a PM2 control
        // register and GPE blocks this platform does not have (neither has
        // QEMU's PIIX4 a PM2 block): those complaints are theirs. Anything
        // else with an ACPI exception code is a failure.
        let exceptions = output.split(separator: "\n").filter { $0.contains("AE_") && !$0.contains("(aetests-") }
        XCTAssertEqual(exceptions, [], "acpiexec reported exceptions:\n\(output)")
        XCTAssertTrue(output.contains("Evaluation of \\_S5 returned object"), output)
        XCTAssertTrue(output.contains("Evaluation of \\_SB.PCI0._PRT returned object"), output)
        // Slot 2's INTA# on GSI 9 and slot 1's on GSI 5, as the PCI bus routes them.
        func route(_ slot: Int, pin: Int, gsi: Int) -> String {
            func i(_ v: Int) -> String { "[Integer] = " + String(repeating: "0", count: 16 - String(v, radix: 16).count) + String(v, radix: 16).uppercased() }
            return [i(slot << 16 | 0xFFFF), i(pin), i(0), i(gsi)].joined(separator: "\n      ")
        }
        XCTAssertTrue(output.contains(route(1, pin: 0, gsi: 5)), output)
        XCTAssertTrue(output.contains(route(2, pin: 0, gsi: 9)), output)
        XCTAssertTrue(output.contains(route(4, pin: 3, gsi: 11)), output)
        XCTAssertTrue(output.contains(route(31, pin: 0, gsi: 10)), output)
        // _S5: SLP_TYP 0, what the PM1a control register takes as soft-off.
        XCTAssertTrue(output.contains("Evaluation of \\_S5 returned object"), output)
    }
}
