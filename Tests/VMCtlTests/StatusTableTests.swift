import Foundation
import Glibc
import XCTest
import VMDControl
@testable import VMCtlCLI

final class StatusTableTests: XCTestCase {
    let running = VMInfo(id: 1, pid: 4242, vcpus: 1, maxMemory: 512 << 20, curMemory: 512 << 20,
                         tty: "/dev/pts/3", owner: "root", state: "running", name: "web")
    let stopped = VMInfo(id: 12, pid: 0, vcpus: 2, maxMemory: 1 << 30, curMemory: 0,
                         tty: "", owner: "alice:staff", state: "stopped", name: "db.example.com")

    /// What vmd's vmctl prints for the same VMs (vmctl.c's print_vm_info).
    func testGolden() {
        let expected = """
               ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME
                1  4242     1    512M    512M   pts/3         root  running web
               12     -     2    1.0G       -       -  alice:staff  stopped db.example.com

            """
        XCTAssertEqual(StatusTable.render([running, stopped]), expected)
    }

    /// The same rows built with the C library's printf and vmctl.c's formats.
    func testMatchesPrintf() {
        XCTAssertEqual(StatusTable.header,
                       cFormat("%5s %5s %5s %7s %7s %7s %12s %8s %s\n",
                               ["ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME"]))
        let long = VMInfo(id: 99999, pid: 1234567, vcpus: 64, maxMemory: 137438953472, curMemory: 1 << 20,
                          tty: "/dev/pts/10", owner: "averyveryverylongusername:group", state: "starting",
                          name: "x")
        for vm in [running, long] {
            let owner = String(vm.owner.utf8.prefix(15))!
            let expected = cFormat("%5u %5u %5zd %7s %7s %7s %12s %8s %s\n",
                                   [vm.id, UInt32(vm.pid), Int(vm.vcpus), ScaledSize.format(vm.maxMemory),
                                    ScaledSize.format(vm.curMemory), String(vm.tty.dropFirst(5)), owner,
                                    vm.state, vm.name])
            XCTAssertEqual(StatusTable.line(vm), expected)
        }
        XCTAssertEqual(StatusTable.line(stopped),
                       cFormat("%5u %5s %5zd %7s %7s %7s %12s %8s %s\n",
                               [stopped.id, "-", Int(stopped.vcpus), "1.0G", "-", "-", stopped.owner,
                                stopped.state, stopped.name]))
    }

    func testOwnerIsCutLikeVmctl() {
        var vm = running
        vm.owner = "averyveryverylongusername:group"
        XCTAssertTrue(StatusTable.line(vm).contains(" averyveryverylo  running web"))
        vm.owner = ""
        XCTAssertTrue(StatusTable.line(vm).contains("         root "))
        XCTAssertEqual(StatusTable.truncated("ééééééééé", bytes: 15), "ééééééé")
    }

    /// Numeric owners (VMs a user made with `vmctl start`) show as names.
    func testNumericOwnersShowAsNames() {
        let users: [UInt32: String] = [0: "root", 1000: "joe"]
        let groups: [UInt32: String] = [50: "staff"]
        func name(_ owner: String) -> String {
            StatusTable.ownerName(owner, user: { users[$0] }, group: { groups[$0] })
        }
        XCTAssertEqual(name("1000"), "joe")
        XCTAssertEqual(name("1000:50"), "joe:staff")
        XCTAssertEqual(name("4242"), "4242")
        XCTAssertEqual(name("joe:77"), "joe:77")
        XCTAssertEqual(name(":50"), ":staff")
        XCTAssertEqual(name("alice"), "alice")
        var vm = running
        vm.owner = "1000"
        XCTAssertTrue(StatusTable.line(vm, ownerName: name).contains("          joe  running web"))
    }

    func testTTYColumn() {
        XCTAssertEqual(StatusTable.ttyName("/dev/pts/3"), "pts/3")
        XCTAssertEqual(StatusTable.ttyName("/dev/ttyp0"), "ttyp0")
        XCTAssertEqual(StatusTable.ttyName(""), "-")
        XCTAssertEqual(StatusTable.ttyName("/dev/"), "/dev/")
        var vm = running
        vm.tty = ""
        XCTAssertTrue(StatusTable.line(vm).contains("    512M    512M       -"))
    }

    /// A VM with no process yet (starting) shows dashes, as vmctl.c decides
    /// "running" by its pid.
    func testStartingVMWithoutPID() {
        var vm = running
        vm.pid = 0
        vm.state = "starting"
        XCTAssertEqual(StatusTable.line(vm),
                       "    1     -     1    512M       -       -         root starting web\n")
    }

    func testJSON() throws {
        let text = StatusTable.json([running, stopped])
        let parsed = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]]
        let rows = try XCTUnwrap(parsed)
        XCTAssertEqual(rows.count, 2)
        XCTAssertEqual(rows[0]["id"] as? Int, 1)
        XCTAssertEqual(rows[0]["pid"] as? Int, 4242)
        XCTAssertEqual(rows[0]["maxmem"] as? Int, 512 << 20)
        XCTAssertEqual(rows[0]["tty"] as? String, "/dev/pts/3")
        XCTAssertEqual(rows[0]["state"] as? String, "running")
        XCTAssertEqual(rows[1]["name"] as? String, "db.example.com")
        XCTAssertEqual(rows[1]["owner"] as? String, "alice:staff")
        XCTAssertTrue(rows[1]["pid"] is NSNull)
        XCTAssertTrue(rows[1]["tty"] is NSNull)
        XCTAssertTrue(rows[1]["curmem"] is NSNull)
        XCTAssertEqual(StatusTable.json([]), "[]\n")
    }

    /// snprintf with `format` and the given values (strings become C strings).
    func cFormat(_ format: String, _ values: [Any]) -> String {
        var cStrings: [UnsafeMutablePointer<CChar>] = []
        defer { cStrings.forEach { free($0) } }
        let args: [CVarArg] = values.map { value in
            switch value {
            case let s as String:
                let p = strdup(s)!
                cStrings.append(p)
                return p
            case let n as UInt32: return n
            case let n as Int: return n
            default: fatalError("unsupported \(value)")
            }
        }
        var buffer = [CChar](repeating: 0, count: 512)
        _ = withVaList(args) { vsnprintf(&buffer, buffer.count, format, $0) }
        return String(cString: buffer)
    }

    /// A group-only owner is shown as vmd shows it, `:group`.
    func testOwnerColumnForGroupOnlyOwners() {
        let user: (UInt32) -> String? = { $0 == 0 ? "root" : nil }
        let group: (UInt32) -> String? = { $0 == 0 ? "wheel" : nil }
        XCTAssertEqual(StatusTable.ownerName(":0", user: user, group: group), ":wheel")
        XCTAssertEqual(StatusTable.ownerName(":staff", user: user, group: group), ":staff")
        XCTAssertEqual(StatusTable.ownerName("0:0", user: user, group: group), "root:wheel")
        XCTAssertEqual(StatusTable.ownerName("1000", user: user, group: group), "1000")
        var info = VMInfo(id: 1, pid: 0, vcpus: 1, maxMemory: 1 << 29, curMemory: 0, tty: "", owner: ":0",
                          state: "stopped", name: "g")
        XCTAssertTrue(StatusTable.line(info, ownerName: { StatusTable.ownerName($0, user: user, group: group) })
                        .contains(" :wheel "))
        info.owner = ""
        XCTAssertTrue(StatusTable.line(info).contains(" root "))
    }
}
