import ArgumentParser
import Glibc
import VMDControl

/// `vmctl [-v] [-s socket] command [arg ...]`: the command line of vmd's
/// control socket. One file per command; see vmctl(8).
struct VMCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmctl",
        abstract: abstract,
        discussion: discussion,
        subcommands: subcommands)

    static let abstract = "Control the virtual machine daemon, vmd."
    static let discussion = """
        usage: vmctl [-v] [-s socket] command [arg ...]
          -v         also print the daemon's informational replies
          -s socket  the control socket (default /run/vmd.sock)
        Commands may be abbreviated to any unique prefix (vmctl stat = vmctl status).
        See vmctl(8).
        """
    static let subcommands: [ParsableCommand.Type] = [
        Console.self, Create.self, Load.self, Log.self, Pause.self, Reload.self, Reset.self,
        Start.self, Status.self, Stop.self, Unpause.self, Wait.self]

    static let usage = "usage: vmctl [-v] [-s socket] command [arg ...]"

    /// Every command word: the names and aliases the commands'
    /// configurations give, written out with `command(named:)` so that an
    /// ordinary run touches nothing of the commands it does not run (not
    /// even their witness tables, issue 14). CommandTableTests checks both
    /// against `subcommands`' configurations.
    static let commandWords = ["console", "create", "load", "log", "pause", "reload", "reset", "start",
                               "status", "show", "stop", "unpause", "wait"]

    static func command(named word: String) -> ParsableCommand.Type? {
        switch word {
        case "console": return Console.self
        case "create": return Create.self
        case "load": return Load.self
        case "log": return Log.self
        case "pause": return Pause.self
        case "reload": return Reload.self
        case "reset": return Reset.self
        case "start": return Start.self
        case "status", "show": return Status.self
        case "stop": return Stop.self
        case "unpause": return Unpause.self
        case "wait": return Wait.self
        default: return nil
        }
    }

    /// Every command's name, for prefix resolution (plus ArgumentParser's `help`).
    static var commandNames: [String] { commandWords + ["help"] }

    /// Runs vmctl with `arguments` (without the program name).
    static func run(arguments: [String]) -> Never {
        // As vmctl: no command is a usage error, not a help page.
        if arguments.isEmpty {
            Output.writeError(usage + "\nRun 'vmctl help' for the list of commands.\n")
            Glibc.exit(1)
        }
        let rewritten: [String]
        do {
            rewritten = try CommandWords.rewrite(arguments, commands: commandNames)
        } catch {
            Output.warn("\(error)")
            Output.writeError(usage + "\nRun 'vmctl help' for the list of commands.\n")
            Glibc.exit(1)
        }
        do {
            var command = try QuickParse.parse(rewritten) ?? parseAsRoot(rewritten)
            try command.run()
        } catch let code as ExitCode {
            // A command's own failure, already reported: ArgumentParser's
            // exit(withError:) would first build a help generator for it
            // (0.7 ms of reflection, issue 14).
            Glibc.exit(code.rawValue)
        } catch {
            // As vmctl: every usage error exits 1 (ArgumentParser's own
            // validation errors would exit 64).
            if exitCode(for: error) == .validationFailure {
                Output.writeError(fullMessage(for: error) + "\n")
                Glibc.exit(1)
            }
            exit(withError: error)
        }
        Glibc.exit(0)
    }
}

/// `-v` and `-s socket`, given before the command (`vmctl -s /tmp/s status`).
struct GlobalOptions: ParsableArguments {
    @Flag(name: .customShort("v"), help: GlobalOptions.verboseHelp)
    var verbose = false

    @Option(name: .customShort("s"), help: GlobalOptions.socketHelp)
    var socket = GlobalOptions.defaultSocket

    static let verboseHelp: ArgumentHelp = "Verbose: also print the daemon's informational replies."
    static let socketHelp = ArgumentHelp("The control socket.", valueName: "socket")
    static let defaultSocket = "/run/vmd.sock"

    func connect() -> ControlConnection { Connector(verbose: verbose, socket: socket).connect() }
}

/// What `-v` and `-s` say, without ArgumentParser's types: a command that
/// declares the two options itself (`status`: each option group costs
/// vmctl's start-up a reflection of its own, issue 14) connects with this.
struct Connector {
    var verbose: Bool
    var socket: String

    /// Connects to vmd, or ends vmctl with `vmctl: connect: PATH: reason`.
    func connect() -> ControlConnection {
        Output.verbose = verbose
        do {
            return try ControlConnection(socketPath: socket)
        } catch let failure as Failure {
            Output.fail(failure)
        } catch {
            Output.fail(Failure(code: 1, message: "\(error)"))
        }
    }
}

/// Runs `body` and turns a daemon failure into `vmctl: <message>` and exit 1.
func reportingFailures(verb: String, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch let failure as Failure {
        Output.fail(failure, verb: verb)
    }
}

/// The program: main.swift (the `vmctl` executable) calls only this.
public func vmctlMain() -> Never {
    VMCtl.run(arguments: Array(CommandLine.arguments.dropFirst()))
}

/// VMCtl's command tree cut down to the one command a command line names,
/// parsed without ArgumentParser's check for `--generate-completion-script`:
/// on every parse of a root command it parses two extra commands for it, a
/// third of vmctl's start-up (issue 14). It skips that check for a command
/// with a super-command, which only changes help and usage texts; so this
/// root is used only when no argument asks for help, completion or tool
/// information, and whatever does not parse cleanly here is parsed again by
/// VMCtl itself, whose messages are the ones printed. Only the chosen
/// command is in the tree (the first word, after CommandWords.rewrite, is
/// its name): the others' configurations are never built.
struct QuickParse: ParsableCommand {
    static var configuration = CommandConfiguration(commandName: "vmctl", _superCommandName: "", subcommands: [])

    /// The parsed command, or nil when VMCtl must parse `arguments`.
    static func parse(_ arguments: [String]) -> ParsableCommand? {
        guard let word = arguments.first, !arguments.contains(where: asksForMore),
              let chosen = VMCtl.command(named: word) else { return nil }
        configuration.subcommands = [chosen]
        guard let command = try? parseAsRoot(arguments), type(of: command) == chosen else { return nil }
        return command
    }

    /// Help, shell completion, tool information, version: VMCtl's.
    static func asksForMore(_ word: String) -> Bool {
        word == "help" || word == "-h" || word == "--help" || word.hasPrefix("--generate-completion")
            || word.hasPrefix("--experimental") || word == "--version" || word.hasPrefix("---")
    }
}
