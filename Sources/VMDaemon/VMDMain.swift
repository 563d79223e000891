import VMDControl
import Glibc
import VMDSystem
import VMConfig

/// The `vmd` executable's entry: the parent, or one of the roles it
/// re-executes itself as.
public enum VMDMain {
    public static func main() -> Never {
        ProcessTitle.initialize()
        let args = Array(CommandLine.arguments.dropFirst())
        if args.starts(with: ["-P", "vhost-user"]) { VhostUserProcess.main(Array(args.dropFirst(2))) }
        if args.starts(with: ["-P", "device-spawner"]) { DeviceSpawnerProcess.main(Array(args.dropFirst(2))) }
        let options: DaemonOptions
        do {
            options = try DaemonOptions.parse(Array(CommandLine.arguments.dropFirst()))
        } catch {
            printError("\(error)")
            exit(1)
        }
        if options.vmProcess {
            Log.setup(foreground: options.foreground, verbosity: options.verbosity, process: "vm")
            VMProcess.main(options)
        }
        if let device = options.deviceName {
            Log.setup(foreground: options.foreground, verbosity: options.verbosity, process: device)
            DeviceProcess.main(options, device: device)
        }
        if let role = options.role {
            Log.setup(foreground: options.foreground, verbosity: options.verbosity, process: role)
            switch role {
            case "priv": PrivProcess(options: options).run()
            case "control":
                guard let user = Users.lookup(Users.daemonUser) else {
                    Log.error("user \(Users.daemonUser) does not exist"); exit(1)
                }
                ControlProcess(options: options, user: user).run()
            case "vmm": VMMProcess(options: options).run()
            default:
                printError("vmd: unknown process role \(role)")
                exit(1)
            }
        }
        runParent(options)
    }

    static func runParent(_ options: DaemonOptions) -> Never {
        let config: VMDConfiguration
        switch Parent.loadConfiguration(options) {
        case .failure(let errs):
            for e in errs.errors { printError(e.description) }
            if options.checkOnly { exit(1) }
            printError("vmd: configuration \(options.configPath) is not valid")
            exit(1)
        case .success(let c):
            config = c
        }
        for w in config.warnings { printError("\(w.description) (warning)") }
        if options.checkOnly {
            if options.verbosity > 0 { print(config.printed(), terminator: "") }
            print("configuration OK")
            exit(0)
        }
        if getuid() != 0 {
            printError("vmd: need root privileges")
            exit(1)
        }
        // Before detaching, so the refusal reaches the terminal: a second
        // vmd must not take over a live daemon's socket (nor its VMs).
        do {
            try Sockets.checkNotLive(options.socketPath)
        } catch {
            printError("vmd: \(error)")
            exit(1)
        }
        Log.setup(foreground: options.foreground, verbosity: options.verbosity, process: "vmd")
        if !options.foreground {
            // Classic daemon: detach from the terminal; stdio to /dev/null.
            if daemon(0, 0) != 0 {
                printError("vmd: daemon: \(errnoDescription(errno))")
                exit(1)
            }
            Log.forked()
        }
        let user: Credentials
        do {
            user = try Users.ensureDaemonUser()
        } catch {
            Log.error("\(error)")
            exit(1)
        }
        let parent = Parent(options: options, config: config, user: user)
        do {
            try parent.start()
        } catch {
            Log.error("start-up failed: \(error)")
            parent.shutdown(status: 1)
        }
        parent.run()
    }
}

func printError(_ s: String) {
    var b = Array(s.utf8)
    b.append(10)
    _ = b.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
