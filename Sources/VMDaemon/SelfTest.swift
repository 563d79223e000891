import Glibc
import VMDSystem

/// Test hook: after a process restricted itself, do something the tests
/// want to watch under the real sandbox. `VMD_SANDBOX_SELFTEST` holds
/// `role:action` pairs separated by commas; the role is `control`, `priv`,
/// `vmm`, `vm` or a device name (`vioblk0`, `viornd`, ...); `viornd@running`
/// acts half a second after the device reported ready. Actions:
///   openat, socket, execve   a forbidden call: the sandbox must kill
///   segv                     a write to an unmapped address: a real trap
///   trap                     a failed Swift precondition
///   errno                    log errno texts (no locale, no file access)
func sandboxSelfTest(role: String) {
    guard let spec = getenv("VMD_SANDBOX_SELFTEST").map({ String(cString: $0) }) else { return }
    for pair in spec.split(separator: ",") {
        let parts = pair.split(separator: ":").map(String.init)
        guard parts.count == 2, parts[0] == role else { continue }
        Log.info("self-test: calling \(parts[1]) inside the sandbox")
        switch parts[1] {
        case "openat": _ = open("/etc/hostname", O_RDONLY)
        case "socket": _ = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        case "execve": _ = execv("/bin/true", [strdup("true"), nil])
        case "segv":
            let p = UnsafeMutablePointer<UInt64>(bitPattern: 0xdead0000)!
            p.pointee = 1
        case "trap":
            // A Swift runtime trap (here a failed precondition) is SIGILL/SIGTRAP.
            precondition(parts.count == 3, "self-test: Swift trap inside the sandbox")
        case "errno":
            Log.warning("self-test: errno: \(SystemError("read", code: EBADF)); \(errnoDescription(EIO)); \(errnoDescription(9999))")
        default: break
        }
        Log.info("self-test: \(parts[1]) returned")
    }
}
