import ArgumentParser
import VMDControl

extension VMCtl {
    /// `load file`: like reload, from another file (ctlReload with its path).
    struct Load: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "load",
            abstract: "Load a configuration file into vmd (an invalid file changes nothing).")

        @OptionGroup var global: GlobalOptions

        @Argument(help: ArgumentHelp("The configuration file.", valueName: "file"))
        var file: String

        func run() throws {
            // vmd reads the file from its own working directory.
            let path: String
            do { path = try StartOptions.absolutePath(file, what: "configuration file") } catch let error as ValidationError {
                Output.warn("load \(file): \(error.message)")
                throw ExitCode.failure
            }
            let connection = global.connect()
            try reportingFailures(verb: "load") {
                try connection.send(.ctlReload, Array(path.utf8))
                Output.debug(try connection.expectOK())
            }
        }
    }
}
