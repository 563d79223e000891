import XCTest
import VMDControl

/// Control relays the parent's replies as bytes (issue 14) after checking
/// their type with switches; these must say exactly what the sets say.
final class ReplyRelayPolicyTests: XCTestCase {
    func testReplySwitchesAgreeWithThePolicySets() {
        for t in MessageType.allCases {
            XCTAssertEqual(MessagePolicy.isClientReply(t), MessagePolicy.clientReplies.contains(t), "\(t)")
            XCTAssertEqual(MessagePolicy.isFinalReply(t), MessagePolicy.finalReplies.contains(t), "\(t)")
        }
        // Everything relayed to a client is something the parent may send control.
        for t in MessageType.allCases where MessagePolicy.isClientReply(t) {
            XCTAssertTrue(MessagePolicy.permits(t.rawValue, on: .parentToControl), "\(t)")
        }
        XCTAssertFalse(MessagePolicy.isClientReply(.ping))
        XCTAssertFalse(MessagePolicy.isClientReply(.ctlClientConnected))
    }
}
