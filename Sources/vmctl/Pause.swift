import ArgumentParser
import VMDControl

extension VMCtl {
    /// `pause name`: vmdPauseVM with the VM's name; vmd answers ctlOK when done.
    struct Pause: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "pause", abstract: "Pause a running VM (its vCPUs stop; devices keep their state).")

        @OptionGroup var global: GlobalOptions

        @Argument(help: ArgumentHelp("The VM's name or id.", valueName: "name"))
        var name: String

        func run() throws {
            if let problem = VMName.problem(name) {
                Output.warn("pause \(name): \(problem)")
                throw ExitCode.failure
            }
            let connection = global.connect()
            try reportingFailures(verb: "pause") {
                try connection.send(.vmdPauseVM, VMRequest(name: name).encoded())
                _ = try connection.expectOK()
                Output.warn("paused vm \(name) successfully")
            }
        }
    }
}
