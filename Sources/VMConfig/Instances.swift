// VM instances (`vm PARENT instance NAME`): an instance inherits what it
// does not set from its parent, as vmd's vm_instance() does for root
// (a configuration file is root's). Disks are never inherited.

extension VMDConfiguration {
    /// `vm` with everything it inherits filled in; `vm` itself if it is not
    /// an instance. The parent chain is followed to its root (parents are
    /// always defined before their instances, so it ends).
    public func resolved(_ vm: VMConfiguration) -> VMConfiguration {
        var chain: [VMConfiguration] = [vm]
        var seen: Set<String> = [vm.name]
        while let parentName = chain[chain.count - 1].parent, let parent = self.vm(named: parentName),
              seen.insert(parent.name).inserted {
            chain.append(parent)
        }
        var result = chain[chain.count - 1]
        for child in chain.dropLast().reversed() {
            result = Self.instance(child, inheritingFrom: result)
        }
        return result
    }

    static func instance(_ child: VMConfiguration, inheritingFrom parent: VMConfiguration) -> VMConfiguration {
        var vm = child
        vm.memoryBytes = child.memoryBytes ?? parent.memoryBytes
        vm.cpus = child.cpus ?? parent.cpus
        vm.bootPath = child.bootPath ?? parent.bootPath
        vm.bootDevice = child.bootDevice ?? parent.bootDevice
        vm.kernelFormat = child.bootPath == nil ? (child.kernelFormat ?? parent.kernelFormat) : child.kernelFormat
        vm.virtioTransport = child.virtioTransport ?? parent.virtioTransport
        vm.cmdline = child.cmdline ?? parent.cmdline
        vm.initrd = child.initrd ?? parent.initrd
        vm.cdrom = child.cdrom ?? parent.cdrom
        vm.interfaceCount = child.interfaceCount ?? parent.interfaceCount
        // Interfaces the instance does not define come from the parent,
        // position by position.
        if parent.interfaces.count > child.interfaces.count {
            vm.interfaces += parent.interfaces[child.interfaces.count...]
        }
        vm.owner = Owner(user: child.owner?.user ?? parent.owner?.user,
                         group: child.owner?.group ?? parent.owner?.group)
        if vm.owner == Owner(user: nil, group: nil) { vm.owner = nil }
        // Instances may themselves be instantiated only if the parent allows it.
        vm.allowInstance = parent.allowInstance.instance ? parent.allowInstance : AllowInstance()
        return vm
    }

    /// What an instance may not take from its parent: the parent's disks,
    /// its fixed MAC addresses and its named tap devices.
    func instanceConflicts(_ child: VMConfiguration, parent: VMConfiguration) -> [(SourceLocation, String)] {
        var conflicts: [(SourceLocation, String)] = []
        let parentDisks = Set(parent.disks.map(\.path))
        for disk in child.disks where parentDisks.contains(disk.path) {
            conflicts.append((disk.location,
                              "vm \"\(child.name)\": disk \(disk.path) cannot be reused from vm \"\(parent.name)\""))
        }
        let parentMACs = Set(parent.interfaces.compactMap(\.lladdr))
        let parentNames = Set(parent.interfaces.compactMap(\.name).filter { $0 != "tap" })
        for interface in child.interfaces {
            if let mac = interface.lladdr, parentMACs.contains(mac) {
                conflicts.append((interface.location,
                                  "vm \"\(child.name)\": lladdr \(mac) cannot be reused from vm \"\(parent.name)\""))
            }
            if let name = interface.name, parentNames.contains(name) {
                conflicts.append((interface.location,
                                  "vm \"\(child.name)\": interface \(name) cannot be reused from vm \"\(parent.name)\""))
            }
        }
        return conflicts
    }
}
