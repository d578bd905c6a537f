import HTTPEdge
import NIOHTTP1
@testable import Server
@testable import Stages
import SwitchyardCore
import Testing

/// The key → caller stage, with its memory of accepted credentials.
@Suite struct AuthStageTests {
    @Test func acceptedKeysAreRememberedAndRefusedOnesAreNot() throws {
        let alice = Caller(tenant: "acme", user: "alice", keyID: "k1")
        let stage = AuthStage(keys: [APIKeyEntry(sha256: KeyHash.sha256Hex("sk-alice"), caller: alice)])
        #expect(try stage.authenticate("sk-alice") == alice)
        #expect(try stage.authenticate("sk-alice") == alice)
        #expect(stage.accepted.withLock { $0.count } == 1)
        for _ in 0..<2 {
            #expect(throws: GatewayError.self) { try stage.authenticate("sk-mallory") }
        }
        #expect(stage.accepted.withLock { $0["sk-mallory"] } == nil)
    }

    @Test func theEmbeddedDefaultMakesEachKeyItsOwnTenantAndForgetsPastTheBound() throws {
        let stage = AuthStage(keys: [])
        let first = try stage.authenticate("key-one")
        #expect(first.tenant == "key-" + KeyHash.sha256Hex("key-one").prefix(12))
        #expect(try stage.authenticate("key-one") == first)
        #expect(try stage.authenticate("key-two") != first)
        for index in 0..<AuthStage.remembered { _ = try stage.authenticate("bulk-\(index)") }
        #expect(stage.accepted.withLock { $0.count } <= AuthStage.remembered)
        #expect(try stage.authenticate("key-one") == first)
    }

    @Test func theCredentialIsReadFromEitherHeader() {
        func credential(_ headers: [(String, String)]) -> String? {
            ChatHandler.credential(EdgeRequest(head: HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/messages",
                                                                     headers: HTTPHeaders(headers))))
        }
        #expect(credential([("Authorization", "Bearer sk-1")]) == "sk-1")
        #expect(credential([("authorization", "bEaReR   sk-2 ")]) == "sk-2")
        #expect(credential([("Authorization", "sk-raw")]) == "sk-raw")
        #expect(credential([("Authorization", "Bearer ")]) == "Bearer")
        #expect(credential([("x-api-key", "sk-ant")]) == "sk-ant")
        #expect(credential([("Authorization", "Bearer sk-é")]) == "sk-é")
        #expect(credential([]) == nil)
    }
}
