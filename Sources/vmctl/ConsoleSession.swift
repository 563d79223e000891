import Glibc
import VMDControl
import VMDSystem

/// `vmctl console NAME` (and `start -c`): asks vmd for the VM's tty and its
/// recently buffered output, prints that, then attaches to the tty itself:
/// raw mode on both sides, `~.` to leave. The user's terminal is restored
/// on every way out, signals included.
enum ConsoleSession {
    /// vmd replays a bounded ring; more than this from a socket peer is not believed.
    static let maxReplay = 1 << 20

    static func attach(name: String, connection: ControlConnection) -> Never {
        var info: VMInfo?
        var replay: [UInt8] = []
        do {
            try connection.send(.vmdConsoleRequest, VMRequest(name: name).encoded())
            let first = try connection.receive()
            guard first.type == .vmdConsoleData else { throw connection.unexpected(first.type) }
            info = try connection.decodeInfo(first.data)
            while true {
                let reply = try connection.receive()
                if reply.type == .vmdInfoVMEnd { break }
                guard reply.type == .vmdConsoleData else { throw connection.unexpected(reply.type) }
                replay += reply.data
                if replay.count > maxReplay { replay.removeFirst(replay.count - maxReplay) }
            }
        } catch let failure as Failure {
            Output.fail(failure, verb: "console")
        } catch {
            Output.fail(Failure(code: EIO, message: "\(error)"), verb: "console \(name)")
        }
        guard let info, !info.tty.isEmpty else {
            Output.fail(Failure(code: ENOENT, message: "console \(name): vm has no console"))
        }

        let tty = openConsole(info.tty, name: name)
        // Whatever sat unread in the tty is also in the replay: drop it so
        // nothing is shown twice.
        tcflush(tty, TCIFLUSH)
        Output.writeAll(STDOUT_FILENO, replay)

        let wake = Signals.install()
        Terminal.makeRaw(STDIN_FILENO)
        let ending = ConsoleRelay(input: STDIN_FILENO, output: STDOUT_FILENO, tty: tty, wakeFD: wake,
                                  endOnInputEOF: isatty(STDIN_FILENO) == 1).run()
        Terminal.restore()
        switch ending {
        case .detached:
            Output.writeError("\n[EOT]\n")
            exit(0)
        case .consoleClosed:
            Output.writeError("\n[EOT]\n")
            Output.warn("console \(name): console closed (vm stopped)")
            exit(0)
        case .signal(let sig):
            Output.debug("console \(name): signal \(sig): detached")
            exit(0)
        case .outputClosed, .inputClosed:
            exit(0)
        case .failed(let reason):
            Output.warn("console \(name): \(reason)")
            exit(1)
        }
    }

    /// Opens the tty vmd named, checking it is one (never some other file),
    /// in raw mode so the guest sees every byte as typed.
    static func openConsole(_ path: String, name: String) -> Int32 {
        let fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 {
            Output.fail(Failure(code: errno, message: "console \(name): \(path): \(String(cString: strerror(errno)))"))
        }
        guard isatty(fd) == 1 else {
            close(fd)
            Output.fail(Failure(code: ENOTTY, message: "console \(name): \(path): not a terminal"))
        }
        var attributes = termios()
        if tcgetattr(fd, &attributes) == 0 {
            cfmakeraw(&attributes)
            tcsetattr(fd, TCSANOW, &attributes)
        }
        // Left raw on purpose when we leave: a pty back in cooked mode would
        // echo the guest's output back to it as input.
        return fd
    }
}

/// The user's terminal: raw while attached, restored on every exit path
/// (normal return, exit(3) through atexit, and the signals in Signals).
enum Terminal {
    nonisolated(unsafe) static var saved: termios?
    nonisolated(unsafe) static var savedFD: Int32 = -1

    static func makeRaw(_ fd: Int32) {
        guard isatty(fd) == 1 else { return }
        var original = termios()
        guard tcgetattr(fd, &original) == 0 else { return }
        saved = original
        savedFD = fd
        atexit { Terminal.restore() }
        var raw = original
        cfmakeraw(&raw)
        tcsetattr(fd, TCSADRAIN, &raw)
    }

    static func restore() {
        guard var original = saved else { return }
        saved = nil
        tcsetattr(savedFD, TCSADRAIN, &original)
    }
}

/// Signals that end a console session arrive as a byte on a pipe, so the
/// relay loop leaves through its normal path and restores the terminal.
enum Signals {
    nonisolated(unsafe) static var writeFD: Int32 = -1
    static let handled = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]

    /// Returns the read end of the pipe the handlers write to.
    static func install() -> Int32 {
        var fds: [Int32] = [-1, -1]
        do {
            guard pipe(&fds) == 0 else { throw SystemError("pipe") }
            for fd in fds {
                try FD.setCloseOnExec(fd)
                try FD.setNonBlocking(fd)
            }
        } catch {
            Output.fail(Failure(code: EIO, message: "\(error)"))
        }
        writeFD = fds[1]
        // A closed output pipe is an error to handle, not a reason to die
        // with the terminal still raw.
        signal(SIGPIPE, SIG_IGN)
        for sig in handled {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { sig in
                var byte = UInt8(truncatingIfNeeded: sig)
                _ = write(Signals.writeFD, &byte, 1)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0
            sigaction(sig, &action, nil)
        }
        return fds[0]
    }
}
