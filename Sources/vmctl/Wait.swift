import ArgumentParser
import VMDControl

extension VMCtl {
    /// `wait name`: returns when the VM has stopped (vmd answers ctlOK then).
    struct Wait: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "wait", abstract: "Wait until a VM has stopped.")

        @OptionGroup var global: GlobalOptions

        @Argument(help: ArgumentHelp("The VM's name or id.", valueName: "name"))
        var name: String

        func run() throws {
            if let problem = VMName.problem(name) {
                Output.warn("wait \(name): \(problem)")
                throw ExitCode.failure
            }
            let connection = global.connect()
            try reportingFailures(verb: "wait") {
                try connection.send(.vmdWaitVM, VMRequest(name: name).encoded())
                Output.note(try connection.expectOK())
            }
        }
    }
}
