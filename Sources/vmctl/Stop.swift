import ArgumentParser
import Glibc
import VMDControl

extension VMCtl {
    /// `stop [-fw] [name | -a]`: graceful shutdown through vmmci (power-off
    /// after a timeout), `-f` at once, `-w` waits until the VM has stopped.
    struct Stop: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop a VM, or all VMs with -a.")

        @OptionGroup var global: GlobalOptions

        @Flag(name: .customShort("f"), help: "Power the VM off at once, without asking the guest.")
        var force = false

        @Flag(name: .customShort("w"), help: "Wait until the VM has stopped.")
        var wait = false

        @Flag(name: .customShort("a"), help: "Stop every running VM (that you own).")
        var all = false

        @Argument(help: ArgumentHelp("The VM's name or id.", valueName: "name"))
        var name: String?

        func validate() throws {
            if all && name != nil { throw ValidationError("give a VM name or -a, not both") }
            if !all && name == nil { throw ValidationError("missing vm name (or -a for all)") }
        }

        var flags: UInt32 {
            (force ? VMRequest.force : 0) | (wait ? VMRequest.wait : 0) | (all ? VMRequest.all : 0)
        }

        func run() throws {
            if let name, let problem = VMName.problem(name) {
                Output.warn("stop \(name): \(problem)")
                throw ExitCode.failure
            }
            let connection = global.connect()
            try reportingFailures(verb: "stop") {
                if all && wait {
                    try Stop.stopAllAndWait(connection, force: force)
                } else {
                    // With -w the one reply comes when the VM has stopped.
                    try connection.send(.vmdStopVMRequest, VMRequest(name: name ?? "", flags: flags).encoded())
                    Output.note(try connection.expectOK())
                }
            }
        }

        /// `stop -a -w`: vmd answers `stop -a` with one line per VM it asked
        /// to stop ("stopping vm NAME: ..."); each is then waited for. A VM
        /// that stopped (or was forgotten) before its wait counts as stopped.
        static func stopAllAndWait(_ connection: ControlConnection, force: Bool) throws {
            let flags = VMRequest.all | (force ? VMRequest.force : 0)
            try connection.send(.vmdStopVMRequest, VMRequest(name: "", flags: flags).encoded())
            let text = try connection.expectOK()
            Output.note(text)
            let names = stoppingNames(text)
            for name in names {
                try connection.send(.vmdWaitVM, VMRequest(name: name).encoded())
            }
            var failures: [Failure] = []
            for _ in names {
                do {
                    Output.note(try connection.expectOK())
                } catch let failure as Failure where failure.code == EINVAL || failure.code == ENOENT {
                    // "vm not running" / "vm not found": it stopped first.
                    continue
                } catch let failure as Failure {
                    failures.append(failure)
                }
            }
            if let first = failures.first {
                throw Failure(code: first.code, message: failures.map(\.message).joined(separator: "\n"))
            }
        }

        /// The VM names in vmd's reply to `stop -a`.
        static func stoppingNames(_ text: String) -> [String] {
            text.split(separator: "\n").compactMap { line in
                guard line.hasPrefix("stopping vm "), let colon = line.firstIndex(of: ":") else { return nil }
                let name = line[line.index(line.startIndex, offsetBy: 12)..<colon]
                return name.isEmpty ? nil : String(name)
            }
        }
    }
}
