import Glibc

/// An error of the VM core, in words a user can act on
/// (`/var/vm/a.elf: no Multiboot header and no bzImage "HdrS" magic`).
public struct VMMError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }

}
