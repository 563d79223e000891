// vmctl: see VMCtl.swift and one file per command (the VMCtlCLI module).
import VMCtlCLI

vmctlMain()
