import XCTest
@testable import VMDaemon

final class VhostUserOptionsTests: XCTestCase {
    func testDirectUse() throws {
        let o = try VhostUserOptions.parse(["-d", "-v", "-t", "blk", "-S", "/run/vhost/disk0.sock", "-i", "/var/vm/a.img", "-r", "-u", "libvirt-qemu:kvm"])
        XCTAssertEqual(o.kind, "blk")
        XCTAssertEqual(o.socketPath, "/run/vhost/disk0.sock")
        XCTAssertEqual(o.imagePath, "/var/vm/a.img")
        XCTAssertTrue(o.readOnly)
        XCTAssertTrue(o.foreground)
        XCTAssertEqual(o.verbosity, 1)
        XCTAssertEqual(o.owner, "libvirt-qemu:kvm")
    }

    func testDescriptorsFromAParent() throws {
        let o = try VhostUserOptions.parse(["-t", "net", "-L", "3", "-B", "4", "-m", "fe:e1:bb:d1:00:02", "-N", "vionet0"])
        XCTAssertEqual(o.listenFD, 3)
        XCTAssertEqual(o.backendFD, 4)
        XCTAssertEqual(o.mac, [0xfe, 0xe1, 0xbb, 0xd1, 0, 2])
        XCTAssertEqual(o.name, "vionet0")
    }

    func testMistakesAreRefused() {
        let bad: [[String]] = [
            ["-t", "blk", "-S", "s"],                              // no image
            ["-t", "rnd", "-S", "s", "-i", "x"],                   // rnd has no backend
            ["-t", "net", "-S", "s", "-i", "x"],                   // net needs a tap
            ["-t", "cdrom", "-S", "s"],                            // unknown kind
            ["-t", "vmmci", "-S", "s"],                            // needs a vmd parent
            ["-t", "rnd"],                                         // no socket
            ["-t", "rnd", "-S", "s", "-L", "3"],                   // both
            ["-t", "rnd", "-L", "1"],                              // stdio is not a socket we own
            ["-t", "net", "-S", "s", "-n", "tap0", "-m", "zz:00:00:00:00:00"],
            ["-t", "rnd", "-S"],                                   // missing value
            ["-t", "rnd", "-S", "s", "extra"],
        ]
        for args in bad {
            XCTAssertThrowsError(try VhostUserOptions.parse(args), "\(args)")
        }
    }
}
