import Caching
import Embeddings
import Foundation
import NIOCore
import NIOPosix
import Redis
import Server
@testable import Stores
import SwitchyardCore
import SwitchyardTestKit
import Testing

/// The learned verifier's calibration shared through Redis: labels given to one instance move the threshold of all,
/// and feedback on a hit served by one instance is taken, once, through another.
@Suite(.serialized) struct SharedCalibrationTests {
    static let settings = ThresholdCalibrator.Settings(base: 0.94, floor: 0.85, ceiling: 0.99, step: 0.01, targetPrecision: 0.99,
                                                       minimumLabels: 50)
    static let key = SemanticCalibration.key(tenant: "acme", model: "gpt-4o-mini")

    func instance(_ server: RedisServerProcess) -> SharedCalibration {
        let client = RedisClient(configuration: server.configuration(), group: MultiThreadedEventLoopGroup.singleton)
        let local = SemanticCalibration(settings: Self.settings, shared: true,
                                        onServed: SharedCalibration.hitRecorder(client: client, keyPrefix: "t:"))
        return SharedCalibration(calibration: local, client: client, keyPrefix: "t:")
    }

    @Test func labelsGivenToOneInstanceSetTheThresholdOfEvery() async throws {
        let server = try RedisServerProcess()
        let a = instance(server), b = instance(server)
        // 400 right answers at 0.90 support serving from 0.90 at 99% (Wilson, one-sided 95%).
        for _ in 0..<400 { a.calibration.record(key: Self.key, score: 0.905, correct: true) }
        #expect(abs(a.calibration.threshold(for: Self.key) - 0.90) < 1e-9)
        #expect(b.calibration.threshold(for: Self.key) == 0.94, "not shared before a sync")
        try await a.sync()
        try await b.sync()
        #expect(abs(b.calibration.threshold(for: Self.key) - 0.90) < 1e-9)
        // Wrong answers reported to B tighten A as well; the totals are the same on both.
        for _ in 0..<20 { b.calibration.record(key: Self.key, score: 0.905, correct: false) }
        try await b.sync()
        try await a.sync()
        #expect(a.calibration.threshold(for: Self.key) > 0.90)
        #expect(a.calibration.threshold(for: Self.key) == b.calibration.threshold(for: Self.key))
        // Syncing again adds nothing twice.
        try await a.sync()
        try await b.sync()
        let connection = try await RedisConnection.connect(server.configuration(), on: MultiThreadedEventLoopGroup.singleton.next())
        let step = ThresholdCalibrator(settings: Self.settings).stepIndex(of: 0.905) ?? -1
        #expect(try await connection.send(["HGET", .string(a.hashKey(Self.key)), .string("r\(step)")]).string == "400")
        #expect(try await connection.send(["HGET", .string(a.hashKey(Self.key)), .string("w\(step)")]).string == "20")
        // Another tenant's calibration is untouched.
        #expect(a.calibration.threshold(for: SemanticCalibration.key(tenant: "other", model: "gpt-4o-mini")) == 0.94)
        await connection.close()
    }

    @Test func labelsAddedWhileTheStoreIsDownAreWrittenWhenItIsBack() async throws {
        let server = try RedisServerProcess()
        let a = instance(server), b = instance(server)
        server.stop()
        for _ in 0..<400 { a.calibration.record(key: Self.key, score: 0.905, correct: true) }
        await #expect(throws: RedisError.self) { try await a.sync() }
        try server.start()
        // The pool reconnects after its backoff: a few tries.
        var synced = false
        for _ in 0..<50 where !synced {
            synced = (try? await a.sync()) != nil
            if !synced { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(synced)
        try await b.sync()
        #expect(abs(b.calibration.threshold(for: Self.key) - 0.90) < 1e-9)
    }

    @Test func feedbackOnAHitServedByOneInstanceIsTakenOnceThroughAnother() async throws {
        let server = try RedisServerProcess()
        let a = instance(server), b = instance(server)
        a.calibration.served(entryID: "sc_1", key: Self.key, score: 0.97)
        try await Task.sleep(for: .milliseconds(200))
        #expect(await !b.feedback(entryID: "sc_1", tenant: "intruder", correct: false), "another tenant cannot label it")
        #expect(await b.feedback(entryID: "sc_1", tenant: "acme", correct: true))
        #expect(await !a.feedback(entryID: "sc_1", tenant: "acme", correct: true), "labelled once, through any instance")
        #expect(await !b.feedback(entryID: "sc_1", tenant: "acme", correct: true))
        #expect(b.calibration.knows(Self.key) && !a.calibration.knows(Self.key))
        try await b.sync()
        try await a.sync()
        #expect(a.calibration.knows(Self.key))
    }

    @Test func hashesThatAreNotOursAreNotRead() {
        let shape = CalibrationCounts(steps: 3)
        func hash(_ fields: [(String, String)]) -> RESPValue {
            .map(fields.map { RESPValue.Pair(.bulkString(Array($0.0.utf8)), .bulkString(Array($0.1.utf8))) })
        }
        let good = SharedCalibration.decode(hash([("key", "t\u{0}m"), ("r1", "5"), ("w2", "1"), ("s0", "9")]), shape: shape)
        #expect(good?.0 == "t\u{0}m" && good?.1 == CalibrationCounts(right: [0, 5, 0], wrong: [0, 0, 1], seen: [9, 0, 0]))
        for bad in [
            [("r1", "5")],                                  // no key
            [("key", "no separator"), ("r1", "5")],
            [("key", "t\u{0}m"), ("r3", "5")],              // a step past the shape
            [("key", "t\u{0}m"), ("r-1", "5")],
            [("key", "t\u{0}m"), ("r1", "-5")],
            [("key", "t\u{0}m"), ("r1", "99999999999999999999")],
            [("key", "t\u{0}m"), ("x1", "5")],
            [("key", "t\u{0}m"), ("r1", "five")],
        ] {
            #expect(SharedCalibration.decode(hash(bad), shape: shape) == nil, "\(bad)")
        }
        // Registry scores (Unix ms) as RESP3 doubles or RESP2 strings; anything not a sane time is skipped.
        #expect(SharedCalibration.score(.double(1_796_000_000_000)) == 1_796_000_000_000)
        #expect(SharedCalibration.score(.bulkString(Array("1796000000000".utf8))) == 1_796_000_000_000)
        for bad: RESPValue in [.double(.nan), .double(.infinity), .double(-1), .double(1e20), .bulkString(Array("x".utf8)), .null] {
            #expect(SharedCalibration.score(bad) == nil, "\(bad)")
        }
    }

    @Test func gatewaysShareTheLearnedVerifiersFeedback() async throws {
        let server = try RedisServerProcess()
        var shared = SharedStateTests.config(redisPort: server.port)
        shared.cache.exactEnabled = false
        shared.cache.semanticLearnedVerifier = true
        let config = shared
        let embeddings = EmbeddingsSetting.model(directory: ModelStore().modelDirectory)
        try await withTestGateway(config, embeddings: embeddings) { _, a in
            try await withTestGateway(config, embeddings: embeddings) { gatewayB, b in
                _ = try await send("\(a)/v1/chat/completions", body: SharedStateTests.body)
                var entry: String?
                for _ in 0..<100 where entry == nil {
                    if gatewayB.semanticCache.count > 0 {
                        let response = try await send("\(b)/v1/chat/completions", body: SharedStateTests.body)
                        if response.header("x-switchyard-cache") == "hit-semantic" { entry = response.header("x-switchyard-cache-entry") }
                    }
                    if entry == nil { try await Task.sleep(for: .milliseconds(20)) }
                }
                guard let entry else {
                    Issue.record("no semantic hit through B")
                    return
                }
                try await Task.sleep(for: .milliseconds(200))
                // Served by B, judged through A: labelled there, once.
                let verdict = #"{"entry_id":"\#(entry)","verdict":"good"}"#
                let first = try await send("\(a)/v1/cache/feedback", body: verdict)
                #expect(first.status == 200 && first.body.contains(#""labelled":true"#), "\(first.body)")
                let again = try await send("\(b)/v1/cache/feedback", body: verdict)
                #expect(again.status == 200 && again.body.contains(#""labelled":false"#), "\(again.body)")
            }
        }
    }
}
