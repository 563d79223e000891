// Statements that parse and validate now but whose run-time behaviour comes
// in a later issue. The daemon refuses to start a VM that uses one, with
// `not supported yet: <statement>`, instead of silently ignoring it.

/// The statements of `vm` the daemon cannot honour yet, by name, in the
/// order they appear in vm.conf(5). Empty means the VM can start.
public func unsupportedFeatures(of vm: VMConfiguration) -> [String] {
    var features: [String] = []
    // Network boot needs an iPXE option ROM for virtio-net handed to SeaBIOS.
    if vm.bootDevice == .net { features.append("boot device net") }
    return features
}

/// Global statements the daemon cannot honour yet, each with its
/// `file:line`; the daemon refuses a configuration that has one (`vmd -n`,
/// start-up and reload). None today: `local inet6` works since vionet
/// answers router solicitations (issue 15).
public func unsupportedStatements(of config: VMDConfiguration) -> [ConfigError] {
    []
}

extension VMConfiguration {
    /// See unsupportedFeatures(of:).
    public var unsupportedFeatures: [String] { VMConfig.unsupportedFeatures(of: self) }
}
