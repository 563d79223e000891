import ArgumentParser
import VMDControl

extension VMCtl {
    /// `reload`: vmd re-reads its configuration file, all or nothing.
    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "reload",
            abstract: "Reload vmd's configuration file (an invalid file changes nothing).")

        @OptionGroup var global: GlobalOptions

        func run() throws {
            let connection = global.connect()
            try reportingFailures(verb: "reload") {
                try connection.send(.ctlReload)
                Output.debug(try connection.expectOK())
            }
        }
    }
}
