import Glibc

/// Copies bytes both ways between the user (input, output) and a VM's
/// console tty until the user detaches with `~.`, the console closes, or a
/// signal arrives on `wakeFD`. Descriptors are passed in, so tests can drive
/// it with pipes and a pty pair.
///
/// When the input reaches end of file (a pipe or /dev/null rather than a
/// terminal), the relay stops reading it but keeps copying the VM's output
/// until the console closes or a signal ends it: a script can feed commands
/// and still see what the VM prints afterwards.
struct ConsoleRelay {
    enum Ending: Equatable {
        case detached               // `~.` typed
        case consoleClosed          // the VM's tty hung up (VM stopped)
        case signal(Int32)          // SIGINT, SIGTERM, SIGHUP, SIGQUIT
        case outputClosed           // nobody reads our output any more
        case inputClosed            // the user's terminal went away
        case failed(String)         // an unexpected I/O error, in words
    }

    let input: Int32
    let output: Int32
    /// Non-blocking, so a VM that stops reading never freezes vmctl.
    let tty: Int32
    /// Readable when a signal arrived (one byte per signal: its number).
    let wakeFD: Int32
    /// End of input ends the session when the input is a terminal (it hung
    /// up); for a pipe or file the VM's output keeps coming, as above.
    var endOnInputEOF = false

    /// Bytes typed but not yet accepted by the tty; reading input pauses
    /// above this many so a stuck VM cannot make vmctl grow without bound.
    static let maxPending = 64 * 1024

    func run() -> Ending {
        var escape = ConsoleEscape()
        var pending: [UInt8] = []
        var inputOpen = true
        var detaching = false
        var detachDeadline = 0.0
        var buffer = [UInt8](repeating: 0, count: 4096)

        while true {
            if detaching && (pending.isEmpty || ConsoleRelay.now() > detachDeadline) { return .detached }
            var fds: [pollfd] = [
                pollfd(fd: tty, events: Int16(POLLIN) | (pending.isEmpty ? 0 : Int16(POLLOUT)), revents: 0),
                pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
            ]
            let wantInput = inputOpen && !detaching && pending.count < ConsoleRelay.maxPending
            if wantInput { fds.append(pollfd(fd: input, events: Int16(POLLIN), revents: 0)) }
            // While detaching, give the last typed bytes a moment to leave.
            let timeout: Int32 = detaching ? 200 : -1
            let ready = poll(&fds, nfds_t(fds.count), timeout)
            if ready < 0 {
                if errno == EINTR { continue }
                return .failed("poll: \(String(cString: strerror(errno)))")
            }
            if ready == 0 && detaching { return .detached }

            if fds[1].revents != 0 {
                var sig: UInt8 = 0
                if read(wakeFD, &sig, 1) == 1 { return .signal(Int32(sig)) }
            }

            let ttyEvents = fds[0].revents
            if ttyEvents & Int16(POLLOUT) != 0 && !pending.isEmpty {
                let n = pending.withUnsafeBytes { write(tty, $0.baseAddress, $0.count) }
                if n > 0 {
                    pending.removeFirst(n)
                } else if n < 0 && errno != EAGAIN && errno != EINTR {
                    return errno == EIO ? .consoleClosed : .failed("write to console: \(String(cString: strerror(errno)))")
                }
            }
            if ttyEvents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                let n = buffer.withUnsafeMutableBytes { read(tty, $0.baseAddress, $0.count) }
                if n > 0 {
                    if !Output.writeAll(output, Array(buffer[0..<n])) { return .outputClosed }
                } else if n == 0 || errno == EIO {
                    // A pty whose other side closed reads EIO: the VM is gone.
                    return .consoleClosed
                } else if errno != EAGAIN && errno != EINTR {
                    return .failed("read from console: \(String(cString: strerror(errno)))")
                }
            }

            if wantInput, let inputEvents = fds.last?.revents, inputEvents != 0 {
                let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
                if n > 0 {
                    switch escape.feed(buffer[0..<n]) {
                    case .send(let bytes):
                        pending += bytes
                    case .detach(let bytes):
                        pending += bytes
                        detaching = true
                        detachDeadline = ConsoleRelay.now() + 0.5
                    }
                } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                    if endOnInputEOF { return .inputClosed }
                    inputOpen = false
                }
            }
        }
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
