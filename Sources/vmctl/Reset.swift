import ArgumentParser
import VMDControl

extension VMCtl {
    /// `reset [all | vms | switches]`: ctlReset with u32 0, 1 or 2.
    struct Reset: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "reset",
            abstract: "Reset the running state: stop all VMs (vms), reset switches, or both (all).")

        @OptionGroup var global: GlobalOptions

        @Argument(help: ArgumentHelp("all (the default), vms or switches.", valueName: "all | vms | switches"))
        var what: String = "all"

        static let codes: [String: UInt32] = ["all": 0, "vms": 1, "switches": 2]

        func run() throws {
            guard let code = Reset.codes[what.lowercased()] else {
                Output.warn("reset: unknown argument \(what) (expected all, vms or switches)")
                throw ExitCode.failure
            }
            let connection = global.connect()
            try reportingFailures(verb: "reset") {
                try connection.send(.ctlReset, ResetRequest(what: code).encoded())
                Output.debug(try connection.expectOK())
            }
        }
    }
}
