// The canonical rendering of a parsed configuration, in vm.conf syntax with
// macros expanded: what `vmd -nv` shows and what the golden tests compare.
// Only what was set is printed (defaults stay implicit), always in the same
// order, so the output parses back to the same configuration.

extension VMDConfiguration {
    public func printed() -> String {
        var sections: [[String]] = []
        var globals: [String] = []
        if let prefix = localPrefix { globals.append("local prefix \(prefix)") }
        if let prefix = localInet6Prefix {
            globals.append("local inet6 prefix \(prefix)")
        } else if localInet6 {
            globals.append("local inet6")
        }
        if let owner = socketOwner { globals.append("socket owner \(quoted(owner))") }
        if let staggered = staggeredStart {
            globals.append("staggered start parallel \(staggered.parallel) delay \(staggered.delaySeconds)")
        }
        if !globals.isEmpty { sections.append(globals) }
        for sw in switches { sections.append(sw.printedLines()) }
        for vm in vms { sections.append(vm.printedLines()) }
        for backend in vhostUsers { sections.append(backend.printedLines()) }
        return sections.map { $0.map { $0 + "\n" }.joined() }.joined(separator: "\n")
    }
}

extension SwitchConfiguration {
    func printedLines() -> [String] {
        var body: [String] = []
        if !enabled { body.append("disable") }
        if let interface { body.append("interface \(quoted(interface))") }
        if let group { body.append("group \(quoted(group))") }
        if lockedLladdr { body.append("locked lladdr") }
        if let rdomain { body.append("rdomain \(rdomain)") }
        if !up { body.append("down") }
        return ["switch \(quoted(name)) {"] + body.map { "\t" + $0 } + ["}"]
    }
}

extension VMConfiguration {
    func printedLines() -> [String] {
        var body: [String] = []
        if !enabled { body.append("disable") }
        if let owner { body.append("owner \(quoted(owner))") }
        if let memoryBytes { body.append("memory \(Validate.formatSize(memoryBytes))") }
        if let cpus { body.append("cpus \(cpus)") }
        if let bootPath { body.append("boot \(quoted(bootPath))" + (kernelFormat.map { " format \($0.rawValue)" } ?? "")) }
        if let virtioTransport { body.append("virtio \(virtioTransport.rawValue)") }
        if let bootDevice { body.append("boot device \(bootDevice.rawValue)") }
        if let cmdline { body.append("cmdline \(quoted(cmdline))") }
        if let initrd { body.append("initrd \(quoted(initrd))") }
        if let cdrom { body.append("cdrom \(quoted(cdrom))") }
        for disk in disks {
            body.append("disk \(quoted(disk.path))" + (disk.format.map { " format \($0.rawValue)" } ?? ""))
        }
        if let interfaceCount { body.append("interfaces \(interfaceCount)") }
        for interface in interfaces { body.append(contentsOf: interface.printedLines()) }
        if !allowInstance.isEmpty { body.append(allowInstance.printed()) }
        let header = parent.map { "vm \(quoted($0)) instance \(quoted(name)) {" } ?? "vm \(quoted(name)) {"
        return [header] + body.map { "\t" + $0 } + ["}"]
    }
}

extension VhostUserConfiguration {
    func printedLines() -> [String] {
        var body: [String] = []
        if !enabled { body.append("disable") }
        if let kind { body.append("type \(kind.rawValue)") }
        if let socketPath { body.append("socket \(quoted(socketPath))") }
        if let owner { body.append("owner \(quoted(owner))") }
        if let disk {
            body.append("disk \(quoted(disk.path))" + (disk.format.map { " format \($0.rawValue)" } ?? "")
                + (readOnly ? " readonly" : ""))
        }
        if let cdrom { body.append("cdrom \(quoted(cdrom))") }
        if hasInterface { body.append("interface" + (interfaceName.map { " \(quoted($0))" } ?? "")) }
        if let lladdr { body.append("lladdr \(lladdr)") }
        return ["vhost-user \(quoted(name)) {"] + body.map { "\t" + $0 } + ["}"]
    }
}

extension Interface {
    func printedLines() -> [String] {
        var head = isLocal ? "local interface" : "interface"
        if let name { head += " \(quoted(name))" }
        var options: [String] = []
        if let switchName { options.append("switch \(quoted(switchName))") }
        if lockedLladdr || lladdr != nil {
            var text = lockedLladdr ? "locked lladdr" : "lladdr"
            if let lladdr { text += " \(lladdr)" }
            options.append(text)
        }
        if let group { options.append("group \(quoted(group))") }
        if let rdomain { options.append("rdomain \(rdomain)") }
        if !up { options.append("down") }
        if options.isEmpty { return [head] }
        return [head + " {"] + options.map { "\t" + $0 } + ["}"]
    }
}

extension AllowInstance {
    func printed() -> String {
        var flags: [String] = []
        if boot { flags.append("boot") }
        if cdrom { flags.append("cdrom") }
        if disk { flags.append("disk") }
        if instance { flags.append("instance") }
        if interface { flags.append("interface") }
        if memory { flags.append("memory") }
        if let owner { flags.append("owner \(quoted(owner))") }
        return "allow instance { " + flags.joined(separator: ", ") + " }"
    }
}

/// A double-quoted vm.conf string: quoted text is never a keyword and never
/// expands macros, so any name prints safely. The lexer reads `\"`, `\ `
/// and `\<tab>` as escapes and keeps any other backslash, so `"` is
/// escaped and a backslash is doubled only before a blank. (A string that
/// ends in a backslash cannot be written quoted at all.)
func quoted(_ text: String) -> String {
    var out = "\""
    var previous: Character?
    for character in text {
        if previous == "\\" && (character == " " || character == "\t") { out += "\\" }
        if character == "\"" { out += "\\\"" } else { out.append(character) }
        previous = character
    }
    return out + "\""
}

func quoted(_ owner: Owner) -> String {
    quoted((owner.user ?? "") + (owner.group.map { ":" + $0 } ?? ""))
}
