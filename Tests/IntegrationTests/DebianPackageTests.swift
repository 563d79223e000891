import Foundation
import XCTest
import Glibc

/// The Debian package, installed on a Debian 12 system with no Swift
/// toolchain and run by a real systemd: `make deb`, a cached
/// `debootstrap --variant=minbase` root booted with `systemd-nspawn -b`, and
/// every check through `nsenter` into the container.
final class DebianPackageTests: XCTestCase {
    static let suite = "bookworm"
    static var mirror: String { ProcessInfo.processInfo.environment["VMD_TEST_MIRROR"] ?? "http://deb.debian.org/debian" }
    static var cacheDir: String { ProcessInfo.processInfo.environment["VMD_TEST_CACHE"] ?? "/var/cache/vmd-test" }

    func testPackageUnderSystemd() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
        for tool in ["/usr/sbin/debootstrap", "/usr/bin/systemd-nspawn", "/usr/bin/nsenter", "/usr/bin/dpkg-deb",
                     "/usr/bin/dpkg-buildpackage", "/usr/bin/dh", "/usr/bin/lintian", "/usr/lib/apt/apt-helper"]
        where !FileManager.default.isExecutableFile(atPath: tool) {
            throw XCTSkip("\(tool) is missing: run .ci/install-deps")
        }
        guard access("/dev/net/tun", R_OK | W_OK) == 0 else { throw XCTSkip("no /dev/net/tun to bind into the container") }

        // Without the archive and without any cached root, say so before
        // spending a release build on it.
        let cached = ((try? FileManager.default.contentsOfDirectory(atPath: Self.cacheDir)) ?? []).contains {
            $0.hasPrefix(Self.suite + "-") && FileManager.default.fileExists(atPath: Self.cacheDir + "/" + $0 + "/.debootstrap-complete")
        }
        if !cached { try Self.requireArchive() }

        var t = Date()
        func phase(_ what: String) {
            print("DebianPackageTests: \(what) took \(String(format: "%.1f", Date().timeIntervalSince(t))) s")
            t = Date()
        }
        let deb = try buildPackage()
        phase("make deb")
        try checkPackageContents(deb)
        let root = try debianRoot(for: deb)
        phase("the Debian root")
        let c = try Container(lower: root)
        defer { c.destroy() }
        try c.copyIn(deb, to: "/root/" + URL(fileURLWithPath: deb).lastPathComponent)
        try c.copyIn(Repo.vmtestELF, to: "/var/lib/vmtest/vmtest.elf")
        try c.boot()
        phase("booting the container")
        let debIn = "/root/" + URL(fileURLWithPath: deb).lastPathComponent

        // No Swift toolchain in there: the binaries carry the standard library.
        XCTAssertFalse(try c.sh("ls /opt/swift /usr/lib/swift 2>/dev/null").out.contains("swift"))

        // Installation: the user, the unit enabled and started (Type=notify:
        // "active" only once vmd said READY=1).
        let inst = try c.run(["apt-get", "install", "-y", "-q", debIn], timeout: 180)
        XCTAssertEqual(inst.status, 0, inst.out)
        XCTAssertTrue(try c.run(["getent", "passwd", "_vmd"]).out.contains("/usr/sbin/nologin"))
        XCTAssertEqual(try c.value("systemctl", "show", "-p", "Type", "--value", "vmd"), "notify")
        XCTAssertEqual(try c.value("systemctl", "is-enabled", "vmd"), "enabled")
        XCTAssertTrue(c.waitFor(["systemctl", "is-active", "vmd"], "active"), c.journal())
        let ldd = try c.run(["ldd", "/usr/sbin/vmd"])
        XCTAssertEqual(ldd.status, 0, ldd.out)
        XCTAssertFalse(ldd.out.contains("not found"), ldd.out)
        XCTAssertFalse(ldd.out.contains("swift"), ldd.out)
        // vmctl is one static file (issue 14: start-up), so it runs anywhere.
        XCTAssertTrue(try c.run(["ldd", "/usr/sbin/vmctl"]).out.contains("not a dynamic executable"))

        // A VM from /etc/vm.conf runs (the shipped example starts none).
        try c.write("/etc/vm.conf", Self.vm("one"))
        XCTAssertEqual(try c.run(["systemctl", "restart", "vmd"], timeout: 90).status, 0, c.journal())
        XCTAssertTrue(c.waitFor(["vmctl", "status", "one"], "running one"), c.journal())
        let mainPID = try c.value("systemctl", "show", "-p", "MainPID", "--value", "vmd")
        let onePID = try c.vmPID("one")

        // `systemctl reload`: a VM added to the file starts, the others go on.
        try c.write("/etc/vm.conf", Self.vm("one") + Self.vm("two"))
        let reload = try c.run(["systemctl", "reload", "vmd"], timeout: 90)
        XCTAssertEqual(reload.status, 0, reload.out + c.journal())
        XCTAssertTrue(c.waitFor(["vmctl", "status", "two"], "running two"), c.journal())
        // A file with an error fails the reload and changes nothing.
        try c.write("/etc/vm.conf", Self.vm("one") + Self.vm("two") + "vm \"three\" { memory lots }\n")
        XCTAssertNotEqual(try c.run(["systemctl", "reload", "vmd"], timeout: 90).status, 0)
        XCTAssertEqual(try c.value("systemctl", "is-active", "vmd"), "active")
        try c.write("/etc/vm.conf", Self.vm("one") + Self.vm("two"))

        // An upgrade (the same package again) neither stops nor restarts
        // the daemon: its VMs keep running.
        let up = try c.run(["dpkg", "-i", debIn], timeout: 120)
        XCTAssertEqual(up.status, 0, up.out)
        XCTAssertEqual(try c.value("systemctl", "show", "-p", "MainPID", "--value", "vmd"), mainPID)
        XCTAssertEqual(try c.vmPID("one"), onePID)
        XCTAssertTrue(try c.run(["vmctl", "status", "two"]).out.contains("running two"))

        // The journal has vmd's own lines, and one Landlock warning at most
        // (nspawn's seccomp filter hides Landlock from services): from the
        // parent, not one per sandboxed process.
        let journal = c.journal()
        XCTAssertTrue(journal.contains("vmd: startup complete"), journal)
        XCTAssertTrue(journal.contains("vm one: started"), journal)
        XCTAssertTrue(journal.contains("vm two: started"), journal)
        let since = try c.value("systemctl", "show", "-p", "InvocationID", "--value", "vmd")
        let run = try c.run(["journalctl", "-q", "-o", "cat", "_SYSTEMD_INVOCATION_ID=" + since]).out
        let landlock = Set(run.split(separator: "\n").filter { $0.contains("Landlock") })
        XCTAssertLessThanOrEqual(landlock.count, 1, run)
        for line in landlock { XCTAssertTrue(line.hasPrefix("vmd: "), run) }

        // `systemctl stop`: each guest is asked to shut down and powers off.
        XCTAssertEqual(try c.run(["systemctl", "stop", "vmd"], timeout: 90).status, 0)
        XCTAssertEqual(try c.value("systemctl", "show", "-p", "Result", "--value", "vmd"), "success")
        let stopped = c.journal()
        for vm in ["one", "two"] {
            XCTAssertTrue(stopped.contains("vm \(vm): asked the guest to shut down (vmmci)"), stopped)
            XCTAssertTrue(stopped.contains("vm \(vm): stopped: guest powered off"), stopped)
        }

        // Remove (the running daemon is stopped first): the conffile stays.
        XCTAssertEqual(try c.run(["systemctl", "start", "vmd"], timeout: 90).status, 0)
        let rm = try c.run(["apt-get", "remove", "-y", "-q", "vmd"], timeout: 120)
        XCTAssertEqual(rm.status, 0, rm.out)
        XCTAssertNotEqual(try c.value("systemctl", "is-active", "vmd"), "active")
        XCTAssertEqual(try c.sh("ls /usr/sbin/vmd /usr/sbin/vmctl /lib/systemd/system/vmd.service /run/vmd.sock 2>&1 | grep -vc 'No such'").out, "0\n")
        XCTAssertEqual(try c.sh("test -f /etc/vm.conf").status, 0)

        // Purge: nothing of ours is left but the _vmd user (Debian practice).
        let purge = try c.run(["apt-get", "purge", "-y", "-q", "vmd"], timeout: 120)
        XCTAssertEqual(purge.status, 0, purge.out)
        XCTAssertTrue(try c.run(["dpkg-query", "-W", "-f", "${Status}", "vmd"]).out.contains("not-installed") ||
                      (try c.run(["dpkg-query", "-W", "vmd"]).status != 0))
        let left = try c.sh("find / -xdev \\( -name '*vmd*' -o -name 'vm.conf*' \\) "
                            + "-not -path '/root/vmd_*.deb' -not -path '/proc/*' 2>/dev/null").out
        XCTAssertEqual(left, "", left)
        XCTAssertEqual(try c.value("systemctl", "list-unit-files", "--no-legend", "vmd.service"), "")
        XCTAssertEqual(try c.run(["getent", "passwd", "_vmd"]).status, 0)
        phase("the checks in the container")
    }

    static func vm(_ name: String) -> String {
        "vm \"\(name)\" {\n\tmemory 32M\n\tboot \"/var/lib/vmtest/vmtest.elf\"\n\tcmdline \"stay\"\n}\n"
    }

    /// `make deb` (release binaries with the static Swift standard library,
    /// dpkg-buildpackage, lintian): the path of the package.
    func buildPackage() throws -> String {
        let make = try runCommand("/usr/bin/make", ["-C", Repo.root.path, "deb"], timeout: 1800)
        guard make.status == 0 else {
            XCTFail("make deb failed:\n\(make.out.suffix(4000))")
            throw XCTSkip("no package")
        }
        let version = try runCommand("/usr/bin/dpkg-parsechangelog",
                                     ["-l", Repo.root.appendingPathComponent("debian/changelog").path, "-S", "Version"])
        let deb = Repo.root.appendingPathComponent("vmd_\(version.out.trimmingCharacters(in: .whitespacesAndNewlines))_amd64.deb").path
        XCTAssertTrue(FileManager.default.fileExists(atPath: deb), make.out.suffix(2000) + "")
        return deb
    }

    /// What the archive holds, without installing it.
    func checkPackageContents(_ deb: String) throws {
        let files = try runCommand("/usr/bin/dpkg-deb", ["-c", deb]).out
        for path in ["./usr/sbin/vmd", "./usr/sbin/vmctl", "./lib/systemd/system/vmd.service", "./etc/vm.conf",
                     "./usr/share/man/man8/vmd.8.gz", "./usr/share/man/man8/vmctl.8.gz",
                     "./usr/share/man/man5/vm.conf.5.gz", "./usr/lib/sysusers.d/vmd.conf"] {
            XCTAssertTrue(files.contains(" \(path)\n"), "\(path) not in the package:\n\(files)")
        }
        let depends = try runCommand("/usr/bin/dpkg-deb", ["-f", deb, "Depends"]).out
        for lib in ["libevent-core-2.1-7", "libbsd0", "libseccomp2", "libc6"] {
            XCTAssertTrue(depends.contains(lib), depends)
        }
        XCTAssertFalse(depends.lowercased().contains("swift"), depends)
        let tmp = NSTemporaryDirectory() + "vmd-deb-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        XCTAssertEqual(try runCommand("/usr/bin/dpkg-deb", ["-e", deb, tmp]).status, 0)
        let conffiles = (try? String(contentsOfFile: tmp + "/conffiles", encoding: .utf8)) ?? ""
        XCTAssertEqual(conffiles, "/etc/vm.conf\n")
    }

    static func requireArchive() throws {
        let probe = NSTemporaryDirectory() + "vmd-release-\(getpid())"
        defer { unlink(probe) }
        let reach = try runCommand("/usr/lib/apt/apt-helper",
                                   ["download-file", mirror + "/dists/\(suite)/Release", probe], timeout: 60)
        guard reach.status == 0 else {
            throw XCTSkip("Debian's archive (\(mirror)) cannot be reached to make the \(suite) root "
                          + "with debootstrap, and \(cacheDir) has none: \(reach.out)")
        }
    }

    /// The package names a root needs: systemd, and what the package depends
    /// on (first alternatives), so that it installs without the archive.
    static func rootPackages(for deb: String) throws -> [String] {
        let depends = try runCommand("/usr/bin/dpkg-deb", ["-f", deb, "Depends"]).out
        var names: Set<String> = ["systemd", "systemd-sysv", "dbus"]
        for dep in depends.split(separator: ",") {
            let first = dep.split(separator: "|").first.map(String.init) ?? ""
            let name = first.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ").first.map(String.init) ?? ""
            if !name.isEmpty { names.insert(name) }
        }
        return names.sorted()
    }

    /// The Debian 12 root, from the cache or made now (about a minute or
    /// two): one per package list, as `bookworm-<hash>`; older ones go.
    func debianRoot(for deb: String) throws -> String {
        let packages = try Self.rootPackages(for: deb)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in (Self.suite + " " + Self.mirror + " " + packages.joined(separator: ",")).utf8 {
            hash = (hash ^ UInt64(b)) &* 0x100_0000_01b3
        }
        let name = Self.suite + "-" + String(hash, radix: 16)
        let dir = Self.cacheDir + "/" + name
        if FileManager.default.fileExists(atPath: dir + "/.debootstrap-complete") { return dir }

        try Self.requireArchive()
        try FileManager.default.createDirectory(atPath: Self.cacheDir, withIntermediateDirectories: true)
        let tmp = dir + ".tmp-\(getpid())"
        try? FileManager.default.removeItem(atPath: tmp)
        let boot = try runCommand("/usr/sbin/debootstrap",
                                  ["--variant=minbase", "--include=" + packages.joined(separator: ","),
                                   Self.suite, tmp, Self.mirror], timeout: 1200)
        guard boot.status == 0 else {
            let log = (try? String(contentsOfFile: tmp + "/debootstrap/debootstrap.log", encoding: .utf8)) ?? ""
            try? FileManager.default.removeItem(atPath: tmp)
            XCTFail("debootstrap failed:\n\(boot.out.suffix(3000))\n\(log.suffix(3000))")
            throw XCTSkip("no root")
        }
        // Packages downloaded by debootstrap are not needed any more.
        _ = try? runCommand("/bin/sh", ["-c", "rm -f '\(tmp)'/var/cache/apt/archives/*.deb"])
        FileManager.default.createFile(atPath: tmp + "/.debootstrap-complete", contents: Data(packages.joined(separator: "\n").utf8))
        if rename(tmp, dir) != 0 {
            if FileManager.default.fileExists(atPath: dir + "/.debootstrap-complete") {
                try? FileManager.default.removeItem(atPath: tmp)   // another run made it meanwhile
            } else {
                try? FileManager.default.removeItem(atPath: dir)   // left half-made by a killed run
                guard rename(tmp, dir) == 0 else {
                    XCTFail("cannot move \(tmp) to \(dir): \(String(cString: strerror(errno)))")
                    throw XCTSkip("no root")
                }
            }
        }
        for old in (try? FileManager.default.contentsOfDirectory(atPath: Self.cacheDir)) ?? []
        where old.hasPrefix(Self.suite + "-") && old != name && !old.contains(".tmp-") {
            try? FileManager.default.removeItem(atPath: Self.cacheDir + "/" + old)
        }
        return dir
    }
}

/// A throw-away container: an overlay over the cached root (a copy where
/// overlayfs is missing), booted with systemd-nspawn.
final class Container {
    let base: String
    let root: String
    let lower: String
    var mounted = false
    let nspawn = Process()
    var leader: Int32 = 0
    let logPath: String

    init(lower: String) throws {
        self.lower = lower
        base = "/var/tmp/vmd-nspawn-\(getpid())-\(UInt32.random(in: 0 ... .max))"
        root = base + "/root"
        logPath = base + "/console.log"
        for d in ["upper", "work", "root"] {
            try FileManager.default.createDirectory(atPath: base + "/" + d, withIntermediateDirectories: true)
        }
        let m = try runCommand("/bin/mount", ["-t", "overlay", "overlay", "-o",
                                              "lowerdir=\(lower),upperdir=\(base)/upper,workdir=\(base)/work", root])
        if m.status == 0 {
            mounted = true
        } else {
            let cp = try runCommand("/bin/cp", ["-a", lower + "/.", root + "/"], timeout: 300)
            XCTAssertEqual(cp.status, 0, cp.out)
        }
    }

    func copyIn(_ file: String, to path: String) throws {
        let dest = root + path
        try FileManager.default.createDirectory(atPath: (dest as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try? FileManager.default.removeItem(atPath: dest)
        try FileManager.default.copyItem(atPath: file, toPath: dest)
    }

    /// Boots the root and waits until its systemd says the system is up.
    func boot() throws {
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        nspawn.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-nspawn")
        nspawn.arguments = ["-b", "-D", root, "--register=no", "--keep-unit", "--bind=/dev/kvm",
                            "--bind=/dev/net/tun", "--console=read-only", "--machine=vmdtest\(getpid())"]
        nspawn.standardOutput = log
        nspawn.standardError = log
        nspawn.standardInput = FileHandle.nullDevice
        try nspawn.run()
        let deadline = Date().addingTimeInterval(60)
        while leader == 0 && Date() < deadline && nspawn.isRunning {
            leader = Self.findLeader(of: nspawn.processIdentifier)
            if leader == 0 { usleep(100_000) }
        }
        guard leader != 0 else {
            XCTFail("the container did not start:\n\(console)")
            throw XCTSkip("no container")
        }
        // PID 1 answers once its private socket exists, a moment after exec;
        // before /run/systemd/system exists systemctl says "offline" instead.
        var state = try run(["systemctl", "is-system-running", "--wait"], timeout: 120)
        let until = Date().addingTimeInterval(60)
        while (state.out.contains("Failed to connect") || state.out.hasPrefix("offline")) && Date() < until {
            usleep(200_000)
            state = try run(["systemctl", "is-system-running", "--wait"], timeout: 120)
        }
        if !state.out.contains("running") {
            let failed = try run(["systemctl", "--failed", "--no-legend"]).out
            XCTAssertTrue(state.out.contains("degraded"), "system state \(state.out)\n\(console)")
            print("container: system \(state.out.trimmingCharacters(in: .whitespacesAndNewlines)): \(failed)")
        }
    }

    var console: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The container's PID 1: nspawn's descendant that is systemd and
    /// PID 1 in its own PID namespace.
    static func findLeader(of nspawn: Int32) -> Int32 {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return 0 }
        var parent: [Int32: Int32] = [:]
        var candidates: [Int32] = []
        for e in entries {
            guard let pid = Int32(e) else { continue }
            let st = procStatus(pid)
            guard let pp = st["PPid"].flatMap({ Int32($0) }) else { continue }
            parent[pid] = pp
            if st["Name"] == "systemd", let ns = st["NSpid"], ns.split(whereSeparator: { $0 == " " || $0 == "\t" }).last == "1" {
                candidates.append(pid)
            }
        }
        for c in candidates {
            var p = c
            for _ in 0..<8 {
                guard let pp = parent[p] else { break }
                if pp == nspawn { return c }
                p = pp
            }
        }
        return 0
    }

    /// Runs a command inside the container (all its namespaces), with a
    /// clean environment.
    @discardableResult
    func run(_ args: [String], timeout: Double = 60) throws -> (status: Int32, out: String) {
        try runCommand("/usr/bin/nsenter", ["-t", String(leader), "-a", "--", "/usr/bin/env", "-i",
                                            "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                                            "DEBIAN_FRONTEND=noninteractive", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]
                       + args, timeout: timeout)
    }

    func sh(_ script: String, timeout: Double = 60) throws -> (status: Int32, out: String) {
        try run(["/bin/sh", "-c", script], timeout: timeout)
    }

    func value(_ args: String...) throws -> String {
        try run(args).out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func write(_ path: String, _ text: String) throws {
        let r = try runCommand("/usr/bin/nsenter", ["-t", String(leader), "-a", "--", "/bin/sh", "-c",
                                                    "cat > '\(path)'"], input: text)
        XCTAssertEqual(r.status, 0, r.out)
    }

    /// vmd's lines (and systemd's about the unit).
    func journal() -> String {
        (try? run(["journalctl", "-u", "vmd", "--no-pager", "-q", "-o", "cat"]))?.out ?? "(no journal)"
    }

    /// Polls `args` until its output contains `text`.
    func waitFor(_ args: [String], _ text: String, timeout: Double = 60) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let r = try? run(args), r.out.contains(text) { return true }
            usleep(250_000)
        }
        return false
    }

    /// A VM's process id, from `vmctl status`.
    func vmPID(_ name: String) throws -> String {
        let out = try run(["vmctl", "status", name]).out
        let row = out.split(separator: "\n").first { $0.hasSuffix(" " + name) }
        return row?.split(separator: " ").dropFirst().first.map(String.init) ?? "?"
    }

    func destroy() {
        if nspawn.isRunning {
            // nspawn turns SIGTERM into an orderly shutdown of the container.
            kill(nspawn.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(30)
            while nspawn.isRunning && Date() < deadline { usleep(100_000) }
            if nspawn.isRunning { kill(nspawn.processIdentifier, SIGKILL); nspawn.waitUntilExit() }
        }
        if mounted { _ = try? runCommand("/bin/umount", ["-l", root]) }
        try? FileManager.default.removeItem(atPath: base)
    }
}
