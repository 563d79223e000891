// Statements that parse and validate now but whose run-time behaviour comes
// in a later issue. The daemon refuses to start a VM that uses one, with
// `not supported yet: <statement>`, instead of silently ignoring it.

/// The statements of `vm` the daemon cannot honour yet, by name, in the
/// order they appear in vm.conf(5). Empty means the VM can start.
public func unsupportedFeatures(of vm: VMConfiguration) -> [String] {
    var features: [String] = []
    if vm.interfaces.contains(where: { $0.switchName != nil }) { features.append("interface switch") }
    if vm.interfaces.contains(where: \.isLocal) { features.append("local interface") }
    if vm.interfaces.contains(where: { $0.group != nil }) { features.append("interface group") }
    if vm.interfaces.contains(where: { $0.rdomain != nil }) { features.append("interface rdomain") }
    if vm.bootDevice != nil { features.append("boot device") }
    // Without `boot` the VM starts from the BIOS, which cannot boot an ISO yet.
    if vm.cdrom != nil && vm.bootPath == nil { features.append("cdrom boot through a BIOS") }
    return features
}

/// Global statements the daemon cannot honour yet: `switch` blocks (Linux
/// bridges come later) and `local inet6`.
public func unsupportedFeatures(of config: VMDConfiguration) -> [String] {
    var features: [String] = []
    if !config.switches.isEmpty { features.append("switch") }
    if config.localInet6 { features.append("local inet6") }
    return features
}

extension VMConfiguration {
    /// See unsupportedFeatures(of:).
    public var unsupportedFeatures: [String] { VMConfig.unsupportedFeatures(of: self) }
}
