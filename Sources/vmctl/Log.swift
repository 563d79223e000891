import ArgumentParser
import VMDControl

extension VMCtl {
    /// `log brief | verbose`: ctlVerbose with u32 0 or 1.
    struct Log: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "log", abstract: "Set vmd's log level.")

        @OptionGroup var global: GlobalOptions

        @Argument(help: ArgumentHelp("brief or verbose (any prefix).", valueName: "brief | verbose"))
        var level: String

        /// As vmctl, a case-insensitive prefix will do: `log v`.
        static func code(_ word: String) -> UInt32? {
            let w = word.lowercased()
            guard !w.isEmpty else { return nil }
            if "brief".hasPrefix(w) { return 0 }
            if "verbose".hasPrefix(w) { return 1 }
            return nil
        }

        func run() throws {
            guard let code = Log.code(level) else {
                Output.warn("log: unknown level \(level) (expected brief or verbose)")
                throw ExitCode.failure
            }
            let connection = global.connect()
            try reportingFailures(verb: "log") {
                try connection.send(.ctlVerbose, VerbosityRequest(level: code).encoded())
                Output.debug(try connection.expectOK())
            }
        }
    }
}
