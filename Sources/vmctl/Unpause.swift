import ArgumentParser
import VMDControl

extension VMCtl {
    /// `unpause name`: vmdUnpauseVM with the VM's name; vmd answers ctlOK when done.
    struct Unpause: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "unpause", abstract: "Resume a paused VM.")

        @OptionGroup var global: GlobalOptions

        @Argument(help: ArgumentHelp("The VM's name or id.", valueName: "name"))
        var name: String

        func run() throws {
            if let problem = VMName.problem(name) {
                Output.warn("unpause \(name): \(problem)")
                throw ExitCode.failure
            }
            let connection = global.connect()
            try reportingFailures(verb: "unpause") {
                try connection.send(.vmdUnpauseVM, VMRequest(name: name).encoded())
                _ = try connection.expectOK()
                Output.warn("unpaused vm \(name) successfully")
            }
        }
    }
}
