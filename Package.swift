// swift-tools-version:6.0
// vmd for Linux: a privilege-separated KVM virtual machine daemon.
import PackageDescription

// The daemon binary (`vmd`) runs every role, device emulators included, so
// nothing it links may import Foundation: device processes exist many times
// per host and their memory counts. Only `vmctl` and the tests use Foundation.
let dataPathSettings: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "vmd",
    products: [
        .executable(name: "vmd", targets: ["vmd"]),
        .executable(name: "vmctl", targets: ["vmctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // System libraries, found with pkg-config, installed from Debian.
        .systemLibrary(name: "CLibevent", pkgConfig: "libevent_core",
                       providers: [.apt(["libevent-dev"])]),
        .systemLibrary(name: "CLibbsd", pkgConfig: "libbsd",
                       providers: [.apt(["libbsd-dev"])]),
        .systemLibrary(name: "CLibseccomp", pkgConfig: "libseccomp",
                       providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        // C shims for what Swift cannot import: macros, variadics, kernel structs.
        .target(name: "CVMDSys", dependencies: ["CLibbsd", "CLibseccomp", "CLibevent"]),
        .target(name: "CKVM"),
        // Asynchronous block I/O: a restricted io_uring (liburing-dev), else a thread pool.
        .target(name: "CVMDAio", linkerSettings: [.linkedLibrary("uring")]),
        // rtnetlink through Debian's libmnl (libmnl-dev): vmd: priv's taps, bridges, VRFs.
        .target(name: "CNetlink", linkerSettings: [.linkedLibrary("mnl")]),

        // The only layer that calls libc for generic system work.
        .target(name: "VMDSystem", dependencies: ["CVMDSys", "CLibseccomp"]),
        .target(name: "Imsg", dependencies: ["VMDSystem"]),
        .target(name: "VMConfig"),
        .target(name: "VMM", dependencies: ["CKVM", "VMDSystem"]),
        // The data path (rings, devices) builds without dynamic exclusivity
        // checks in release: they took ~5% of a vionet process's samples
        // (swift_beginAccess and its thread-local lookup on every class
        // property access); debug builds, which the tests use, keep them.
        .target(name: "Virtio", swiftSettings: dataPathSettings),
        // qcow2 and raw images on already-open files (no Foundation, no open()).
        .target(name: "DiskImage", dependencies: ["CZlib", "VMDSystem"]),
        .target(name: "VirtioDevices", dependencies: ["Virtio", "VMDSystem", "DiskImage", "CVMDAio"],
                swiftSettings: dataPathSettings),
        // vhost-user: the same devices as backends of QEMU (and others).
        .target(name: "CVhostUser"),
        .target(name: "VhostUser", dependencies: ["CVhostUser", "Virtio"]),
        // The control protocol vmctl and the daemon share (message types, payloads).
        .target(name: "VMDControl"),
        .target(name: "VMDaemon", dependencies: ["VMDSystem", "Imsg", "VMDControl", "VMConfig", "VMM",
                                            "Virtio", "VirtioDevices", "VhostUser", "DiskImage", "CNetlink"]),

        // Thin executables.
        .executableTarget(name: "vmd", dependencies: ["VMDaemon"]),
        // vmctl's commands (one file per verb) are a library so that the
        // tests can import them without linking the executable's flags.
        .target(name: "VMCtlCLI", dependencies: [
            "VMDControl", "Imsg", "VMDSystem", "DiskImage",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Sources/vmctl", exclude: ["main"]),
        .executableTarget(name: "vmctl", dependencies: ["VMCtlCLI"], path: "Sources/vmctl/main",
                          linkerSettings: [
            // Start-up (issue 14): fully static, so exec maps one file and
            // the dynamic loader has nothing to load or relocate (3-4x
            // faster than with the shared Swift runtime; see bench/README.md).
            // Foundation Essentials (swift-argument-parser's) needs the
            // archives the driver does not name.
            .unsafeFlags(["-static-executable", "-lmd", "-l_FoundationCollections", "-l_FoundationCShims",
                          "-lswiftSynchronization"]),
        ]),

        .testTarget(name: "VMDSystemTests", dependencies: ["VMDSystem"]),
        .testTarget(name: "ImsgTests", dependencies: ["Imsg", "VMDSystem"]),
        .testTarget(name: "VMConfigTests", dependencies: ["VMConfig"],
                    resources: [.copy("Golden")]),
        .testTarget(name: "VMMTests", dependencies: ["VMM"]),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "VirtioDevices", "VMDSystem", "DiskImage"]),
        .testTarget(name: "VhostUserTests", dependencies: ["VhostUser", "CVhostUser", "Virtio", "VirtioDevices", "VMDSystem"]),
        .testTarget(name: "VMCtlTests", dependencies: ["VMCtlCLI", "VMDControl", "Imsg", "VMDSystem"]),
        .testTarget(name: "VMDaemonTests", dependencies: ["VMDaemon", "VMDControl", "VirtioDevices"]),
        .testTarget(name: "IntegrationTests", dependencies: ["VMDControl"]),
        .testTarget(name: "DiskImageTests", dependencies: ["DiskImage", "VMDSystem"]),
        // The child the qcow2 kill -9 tests kill: writes through DiskImage.
        .executableTarget(name: "qcow2-stress", dependencies: ["DiskImage"], path: "Tests/Tools/qcow2-stress"),
    ],
    swiftLanguageModes: [.v5]
)
