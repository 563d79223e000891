import ArgumentParser
import Glibc
import VMDControl

extension VMCtl {
    /// `status [-r] [--json] [name]` (also `show`): vmd's table of VMs.
    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status",
            abstract: "List VMs (all, or the one named), in vmd's table layout.",
            aliases: ["show"])

        // GlobalOptions' -v and -s, declared here: an @OptionGroup costs
        // every `vmctl status` a reflection of one more type (issue 14).
        // The help and the parsing are the same (VMCtlTests).
        @Flag(name: .customShort("v"), help: GlobalOptions.verboseHelp)
        var verbose = false

        @Option(name: .customShort("s"), help: GlobalOptions.socketHelp)
        var socket = GlobalOptions.defaultSocket

        var global: Connector { Connector(verbose: verbose, socket: socket) }

        @Flag(name: .customShort("r"), help: "Only list running VMs.")
        var runningOnly = false

        @Flag(name: .customLong("json"), help: "Print a JSON array of objects instead of the table.")
        var json = false

        @Argument(help: ArgumentHelp("A VM's name or id.", valueName: "name"))
        var name: String?

        func run() throws {
            if let name, let problem = VMName.problem(name) {
                Output.warn("status \(name): \(problem)")
                throw ExitCode.failure
            }
            let connection = global.connect()
            var vms: [VMInfo] = []
            var backends: [BackendInfo] = []
            try reportingFailures(verb: "status") {
                (vms, backends) = try Status.fetch(connection, name: name ?? "")
            }
            if runningOnly { vms = vms.filter(StatusTable.isRunning) }
            if json {
                Output.writeOut(BackendTable.json(vms: vms, backends: backends))
            } else {
                var text = StatusTable.render(vms, ownerName: Status.ownerName)
                if !backends.isEmpty { text += "\n" + BackendTable.render(backends) }
                Output.writeOut(text)
            }
            // As vmd's vmctl: an empty listing is a failure, so scripts can
            // test `vmctl status -r name` for "is it running".
            if vms.isEmpty && backends.isEmpty {
                if let name { Output.warn("status \(name): \(runningOnly ? "vm not running" : "vm not found")") }
                throw ExitCode.failure
            }
        }

        static func ownerName(_ owner: String) -> String {
            StatusTable.ownerName(owner,
                                  user: { uid in getpwuid(uid).map { String(cString: $0.pointee.pw_name) } },
                                  group: { gid in getgrgid(gid).map { String(cString: $0.pointee.gr_name) } })
        }

        /// vmdGetInfoVMRequest with the name ("" for all), then one
        /// vmdInfoVMData per VM, then (for all) one vmdInfoBackendData per
        /// vhost-user backend, until vmdInfoVMEnd.
        static func fetch(_ connection: ControlConnection, name: String) throws -> ([VMInfo], [BackendInfo]) {
            try connection.send(.vmdGetInfoVMRequest, InfoRequest(name: name).encoded())
            var vms: [VMInfo] = []
            var backends: [BackendInfo] = []
            while true {
                let reply = try connection.receive()
                switch reply.type {
                case .vmdInfoVMData: vms.append(try connection.decodeInfo(reply.data))
                case .vmdInfoBackendData:
                    guard let b = try? BackendInfo(decoding: reply.data) else {
                        throw Failure(code: EPROTO, message: "malformed backend information from vmd")
                    }
                    backends.append(b)
                case .vmdInfoVMEnd: return (vms, backends)
                default: throw connection.unexpected(reply.type)
                }
            }
        }
    }
}
