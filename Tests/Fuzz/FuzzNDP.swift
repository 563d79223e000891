// libFuzzer target: a frame a guest sends on a local interface with
// `local inet6` (issue 15). vionet's router (RouterAdvertisement.swift)
// must never trap or read outside the frame, and any reply must be the
// fixed advertisement for this interface, answering only a solicitation
// that passed RFC 4861's checks.

let guestMAC: [UInt8] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34]
let local = LocalInterface(hostIPv4: 0x6440_0102, guestIPv4: 0x6440_0103,
                           hostMAC: [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x35], hostname: "fuzz",
                           hostIPv6: [0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1, 100, 64, 1, 3, 0, 0, 0, 1])
let fixed = RouterAdvertisement.advertisement(guestMAC: guestMAC, local: local)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNDP(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let frame = UnsafeRawBufferPointer(start: data, count: size)
    // The options parser on its own, on any bytes.
    if case .success(let sll?) = RouterAdvertisement.parseOptions(frame) { precondition(sll.count == 6) }
    switch LocalServices.handle(frame: frame, guestMAC: guestMAC, local: local) {
    case .notDHCP, .drop:
        return 0
    case .reply(let r):
        if size >= 14 && frame[12] == 0x08 { return 0 }     // a DHCP reply: FuzzDHCP checks those
        precondition(size >= 14 + 40 + 8 && size <= 1514, "answered a frame RFC 4861 refuses")
        precondition(frame[14 + 7] == 255 && frame[14 + 6] == 58 && frame[54] == 133)
        precondition(frame[6..<12].elementsEqual(guestMAC))
        precondition(r == fixed, "the advertisement is always the same")
        return 0
    }
}
