// libFuzzer target: a frame a guest sends on a local interface (issue 15).
// vionet's DHCP server must never trap or read outside the frame, and any
// reply must be the fixed answer for this interface: to the guest's MAC
// and address, from the host side, with the request's xid, one of OFFER,
// ACK, NAK or a BOOTP reply, and of bounded size.

let guestMAC: [UInt8] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34]
let local = LocalInterface(hostIPv4: 0x6440_0102, guestIPv4: 0x6440_0103,
                           hostMAC: [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x35], hostname: "fuzz")

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDHCP(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let frame = UnsafeRawBufferPointer(start: data, count: size)
    // The options parser on its own, on any bytes.
    let options = DHCPServer.parseOptions(frame)
    if let t = options.messageType { precondition(size >= 3 && t == t) }
    switch DHCPServer.handle(frame: frame, guestMAC: guestMAC, local: local) {
    case .notDHCP, .drop:
        return 0
    case .reply(let r):
        precondition(size >= 14 + 300 && size <= 1514, "answered a frame dhcp.c refuses")
        precondition(r.count >= 14 + 20 + 8 + 300 && r.count <= 14 + 20 + 8 + 236 + 64 + 300)
        precondition(Array(r[0..<6]) == guestMAC && Array(r[6..<12]) == local.hostMAC)
        precondition(Array(r[26..<34]) == [100, 64, 1, 2, 100, 64, 1, 3])
        let bootp = 42
        precondition(r[bootp] == 2)
        let ihl = Int(frame[14] & 0x0f) * 4
        let xid = 14 + ihl + 8 + 4
        precondition(Array(r[(bootp + 4)..<(bootp + 8)]) == Array(frame[xid..<(xid + 4)]), "xid copied")
        precondition(Array(r[(bootp + 16)..<(bootp + 20)]) == [100, 64, 1, 3])
        // Options after the cookie: a type, if any, is 2, 5 or 6.
        var i = bootp + 236 + 4
        while i < r.count && r[i] != 255 {
            if r[i] == 53 { precondition([2, 5, 6].contains(r[i + 2])) }
            i += 2 + Int(r[i + 1])
        }
        precondition(i < r.count, "options end with END inside the reply")
        return 0
    }
}
