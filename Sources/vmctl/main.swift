// vmctl: see VMCtl.swift and one file per command.
VMCtl.run(arguments: Array(CommandLine.arguments.dropFirst()))
