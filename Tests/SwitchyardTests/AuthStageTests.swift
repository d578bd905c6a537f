import HTTPEdge
import NIOHTTP1
@testable import Server
@testable import Stages
import SwitchyardCore
import Testing

/// The key → caller stage, with its memory of accepted credentials.
@Suite struct AuthStageTests {
    /// Keys and stored names depend on these digests staying exactly SHA-256 (FIPS 180-2's test vectors).
    @Test func keyHashesAreSHA256InLowercaseHex() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        #expect(KeyHash.sha256Hex("abc") == abc)
        #expect(KeyHash.sha256Hex(bytes: Array("abc".utf8)) == abc)
        #expect(KeyHash.sha256Hex("abc", characters: 16) == String(abc.prefix(16)))
        #expect(KeyHash.sha256Hex("abc", characters: 15) == String(abc.prefix(15)))
        #expect(KeyHash.sha256Hex("abc", characters: 99) == abc && KeyHash.sha256Hex("abc", characters: -1).isEmpty)
        #expect(KeyHash.sha256Hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        // A bridged or non-contiguous string hashes the same as its bytes.
        let long = String(repeating: "é", count: 100)
        #expect(KeyHash.sha256Hex(long) == KeyHash.sha256Hex(bytes: Array(long.utf8)))
        #expect(KeyHash.hex([0x00, 0x0f, 0xa0, 0xff]) == "000fa0ff")
    }

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
