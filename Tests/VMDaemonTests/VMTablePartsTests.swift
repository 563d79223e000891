import XCTest
import Glibc
@testable import VMDaemon
import VMDControl
import VMConfig
import VMDSystem
import VirtioDevices

/// The VM table's decisions, without root, KVM or a daemon.
final class ControlAuthorizationTests: XCTestCase {
    let root = ClientCredentials(uid: 0, gid: 0)
    let alice = ClientCredentials(uid: 1000, gid: 1000)
    let bob = ClientCredentials(uid: 1001, gid: 50)

    func testOnlyRootMayReloadOrChangeTheLog() {
        XCTAssertEqual(ControlAuthorization.mayRequest(.ctlReload, root), .allowed)
        XCTAssertEqual(ControlAuthorization.mayRequest(.ctlReload, alice),
                       .denied("permission denied: only root may do that"))
        XCTAssertNotEqual(ControlAuthorization.mayRequest(.ctlVerbose, alice), .allowed)
        XCTAssertNotEqual(ControlAuthorization.mayRequest(.ctlReset, alice), .allowed)
        for t in [MessageType.vmdStartVMRequest, .vmdStopVMRequest, .vmdGetInfoVMRequest, .vmdConsoleRequest] {
            XCTAssertEqual(ControlAuthorization.mayRequest(t, alice), .allowed, "\(t)")
        }
    }

    func testOwnersByUserOrGroup() {
        let byUser = VMOwnership(configured: true, uid: 1000, gid: nil)
        let byGroup = VMOwnership(configured: true, uid: 0, gid: 50)
        XCTAssertTrue(ControlAuthorization.mayControl(byUser, alice))
        XCTAssertFalse(ControlAuthorization.mayControl(byUser, bob))
        XCTAssertTrue(ControlAuthorization.mayControl(byGroup, bob))
        XCTAssertFalse(ControlAuthorization.mayControl(byGroup, alice))
        XCTAssertTrue(ControlAuthorization.mayControl(.rootOnly, root))
        XCTAssertFalse(ControlAuthorization.mayControl(.rootOnly, alice), "no owner: root only")
        // `owner root` names uid 0: that is no grant to a user whose uid lookup failed.
        XCTAssertFalse(ControlAuthorization.mayControl(VMOwnership(configured: true, uid: 0, gid: nil), alice))
    }

    func testOnlyRootMayMakeTheDaemonOpenPaths() {
        var req = StartRequest(name: "web")
        XCTAssertEqual(ControlAuthorization.mayStart(with: req, alice), .allowed)
        req.disks = ["/etc/shadow"]
        XCTAssertNotEqual(ControlAuthorization.mayStart(with: req, alice), .allowed)
        XCTAssertEqual(ControlAuthorization.mayStart(with: req, root), .allowed)
    }
}

final class VMLifecycleStateTests: XCTestCase {
    func testStartRunStop() {
        var l = VMLifecycle()
        XCTAssertEqual(l.state, .stopped)
        XCTAssertEqual(l.stop(processExists: false), .none, "nothing to stop")
        l.launching()
        XCTAssertEqual(l.state, .starting)
        XCTAssertFalse(l.started())
        XCTAssertEqual(l.state, .running)
        l.paused(true)
        XCTAssertEqual(l.state, .paused)
        l.paused(false)
        XCTAssertEqual(l.stop(processExists: true), .send)
        XCTAssertEqual(l.state, .stopping)
        XCTAssertEqual(l.exited(.stopped, now: 1), .stopped)
        XCTAssertEqual(l.state, .stopped)
    }

    func testAStopWhileStartingIsSentOnceTheVMRuns() {
        var l = VMLifecycle()
        l.launching()
        XCTAssertEqual(l.stop(processExists: false), .deferred)
        XCTAssertEqual(l.state, .starting)
        XCTAssertTrue(l.started(), "the deferred stop goes now")
        XCTAssertEqual(l.stop(processExists: true), .send)
        XCTAssertEqual(l.exited(.reboot, now: 1), .stopped, "a guest reboot after a stop request ends the VM")
    }

    func testRebootsRestartUntilThreeInSixSeconds() {
        var l = VMLifecycle()
        l.launching(); _ = l.started()
        XCTAssertEqual(l.exited(.reboot, now: 100), .restart)
        l.launching(); _ = l.started()
        XCTAssertEqual(l.exited(.reboot, now: 102), .restart)
        l.launching(); _ = l.started()
        XCTAssertEqual(l.exited(.reboot, now: 104), .restartLimitReached)
        XCTAssertEqual(l.state, .stopped)
        // Spread out, reboots go on for ever.
        for t in stride(from: 200.0, to: 260, by: 7) {
            l.launching(); _ = l.started()
            XCTAssertEqual(l.exited(.reboot, now: t), .restart)
        }
    }

    func testAFailedRefusedStartIsStopped() {
        var l = VMLifecycle()
        l.launching()
        l.refused()
        XCTAssertEqual(l.state, .stopped)
        l.launching()
        XCTAssertEqual(l.exited(.failed, now: 1), .stopped)
    }
}

final class LaunchBuilderTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        var template = Array("/tmp/vmd-launch-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw XCTSkip("mkdtemp failed") }
        dir = String(cString: template)
    }

    override func tearDown() {
        for name in ["kernel", "disk.img", "disk.qcow2", "cd.iso"] { unlink("\(dir)/\(name)") }
        rmdir(dir)
    }

    func file(_ name: String, _ bytes: [UInt8] = [0, 0, 0, 0]) -> String {
        let path = "\(dir)/\(name)"
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        return path
    }

    func vm(_ configure: (inout VMConfiguration) -> Void) -> VMConfiguration {
        var c = VMConfiguration(name: "t", location: SourceLocation(file: "vm.conf", line: 1))
        c.bootPath = file("kernel")
        configure(&c)
        return c
    }

    func openDescriptorCount() -> Int { FD.openDescriptors().count }

    func testDevicesInSlotOrderWithTheirDescriptors() throws {
        let disk = file("disk.img")
        let cd = file("cd.iso")
        let config = vm { $0.disks = [Disk(path: disk, format: nil, location: $0.location)]; $0.cdrom = cd
            $0.interfaceCount = 1 }
        var launch = try LaunchBuilder.prepare(vmid: 4, config: config, ownerUID: 1000).get()
        defer { launch.closeDescriptors() }
        XCTAssertEqual(launch.spec.devices.map(\.kind), [.blk, .net, .rnd, .scsi, .vmmci])
        XCTAssertEqual(launch.descriptors.count, 3, "kernel, disk, cdrom")
        XCTAssertEqual(launch.spec.devices[0].descriptors, [1])
        XCTAssertEqual(launch.spec.devices[0].parameters.identifier, "disk.img")
        XCTAssertEqual(launch.spec.devices[3].descriptors, [2])
        XCTAssertEqual(launch.tapNames, [""])
        XCTAssertFalse(launch.isComplete, "the tap is still to come")
        let (a, b) = try FD.socketPair()
        FD.close(b)
        launch.attachTap(a)
        XCTAssertTrue(launch.isComplete)
        XCTAssertEqual(launch.spec.devices[1].descriptors, [3])
        XCTAssertEqual(launch.spec.ownerUID, 1000)
        XCTAssertNoThrow(try LaunchSpec(decoding: launch.spec.encoded()))
    }

    func testRefusalsCloseEverythingAndSayWhy() throws {
        let before = openDescriptorCount()
        let missing = vm { $0.disks = [Disk(path: "\(self.dir)/nope.img", format: nil, location: $0.location)] }
        guard case .failure(let r1) = LaunchBuilder.prepare(vmid: 1, config: missing, ownerUID: 0) else {
            return XCTFail("a missing disk must refuse")
        }
        XCTAssertEqual(r1.code, ENOENT)
        XCTAssertEqual(r1.message, "disk \(dir)/nope.img: No such file or directory")

        // qcow2 magic and a version, then nothing: a hostile header.
        let qcow = file("disk.qcow2", [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3])
        let q = vm { $0.disks = [Disk(path: qcow, format: nil, location: $0.location)] }
        guard case .failure(let r2) = LaunchBuilder.prepare(vmid: 1, config: q, ownerUID: 0) else {
            return XCTFail("a truncated qcow2 header must refuse")
        }
        XCTAssertEqual(r2.code, EINVAL)
        XCTAssertTrue(r2.message.hasPrefix("disk \(qcow)"), r2.message)
        XCTAssertEqual(openDescriptorCount(), before, "nothing left open after a refusal")
    }

    func testADiskInUseIsRefused() throws {
        let disk = file("disk.img")
        let config = vm { $0.disks = [Disk(path: disk, format: nil, location: $0.location)] }
        let first = try LaunchBuilder.prepare(vmid: 1, config: config, ownerUID: 0).get()
        defer { first.closeDescriptors() }
        guard case .failure(let r) = LaunchBuilder.prepare(vmid: 2, config: config, ownerUID: 0) else {
            return XCTFail("a locked disk must be refused")
        }
        XCTAssertEqual(r, LaunchRefusal(code: EBUSY, message: "disk \(disk): in use by another VM"))
    }
}
