import ArgumentParser

extension VMCtl {
    /// `console name`: attach to the VM's serial console; `~.` detaches.
    struct Console: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "console",
            abstract: "Attach to a VM's console (type ~. at the start of a line to leave).")

        @OptionGroup var global: GlobalOptions

        @Argument(help: ArgumentHelp("The VM's name or id.", valueName: "name"))
        var name: String

        func run() throws {
            if let problem = VMName.problem(name) {
                Output.warn("console \(name): \(problem)")
                throw ExitCode.failure
            }
            ConsoleSession.attach(name: name, connection: global.connect())
        }
    }
}
