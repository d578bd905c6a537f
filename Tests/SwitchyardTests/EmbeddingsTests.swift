@testable import Embeddings
import Foundation
import SwitchyardCore
import SwitchyardModels
import Server
import SwitchyardTestKit
import Testing

/// Numerics of the Swift MiniLM encoder against sentence-transformers' own output
/// (`../shared/data/embeddings/minilm_reference.json`). The model comes from `switchyard models pull`,
/// which scripts/test.sh runs first.
@Suite struct EmbeddingsTests {
    struct Reference {
        var text: String
        var ids: [Int32]
        var embedding: [Float]
    }

    static let projectRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static func references() throws -> [Reference] {
        let path = projectRoot.appendingPathComponent("../shared/data/embeddings/minilm_reference.json").path
        let json = try JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: path)))
        return (json["items"]?.arrayValue ?? []).map { item in
            Reference(text: item["text"]?.stringValue ?? "",
                      ids: (item["input_ids"]?.arrayValue ?? []).compactMap { $0.intValue.map { Int32($0) } },
                      embedding: (item["embedding"]?.arrayValue ?? []).compactMap { $0.doubleValue.map { Float($0) } })
        }
    }

    static func encoder(allowAVX512: Bool = true) throws -> MiniLMEncoder {
        let store = ModelStore()
        guard store.isAvailable else {
            throw EmbeddingError.modelUnavailable("no model in \(store.root): run `swift run switchyard models pull` (scripts/test.sh does)")
        }
        return try MiniLMEncoder(directory: store.modelDirectory, allowAVX512: allowAVX512)
    }

    /// Runs encoder work on a thread of its own. Swift's cooperative pool has one thread per core: seconds of
    /// matrix products on it would hold back every other test's continuations (seen as the client's and the
    /// gateway's timeouts firing seconds late in a full run).
    static func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }

    @Test func referenceFileHasTheFiftyEightSentences() throws {
        let references = try Self.references()
        #expect(references.count == 58)
        #expect(references.allSatisfy { $0.embedding.count == 384 && !$0.ids.isEmpty })
    }

    @Test func tokenIDsAreIdenticalToTheReference() throws {
        let encoder = try Self.encoder()
        for reference in try Self.references() {
            #expect(encoder.tokenizer.encode(reference.text) == reference.ids, "\(reference.text.prefix(60))")
        }
    }

    /// Both matrix-product kernels: AVX-512 where the CPU has it, and the AVX2 one every x86-64 CPU runs.
    @Test(arguments: [true, false])
    func embeddingsMatchTheReferenceToCosine0_9999(allowAVX512: Bool) async throws {
        let references = try Self.references()
        let (vectors, usesAVX512) = try await Self.offPool {
            let encoder = try Self.encoder(allowAVX512: allowAVX512)
            return (references.map { encoder.embed(ids: $0.ids) }, encoder.usesAVX512)
        }
        var worst: Float = 1
        for (reference, vector) in zip(references, vectors) {
            var dot: Float = 0, a: Float = 0, b: Float = 0
            for (x, y) in zip(vector, reference.embedding) {
                dot += x * y
                a += x * x
                b += y * y
            }
            let cosine = dot / (a.squareRoot() * b.squareRoot())
            worst = min(worst, cosine)
            #expect(cosine >= 0.9999, "\(reference.text.prefix(60)): cosine \(cosine)")
            #expect(abs(a.squareRoot() - 1) < 1e-4)
        }
        print("worst cosine against sentence-transformers (AVX-512 kernel: \(usesAVX512)): \(worst)")
    }
}

extension EmbeddingsTests {
    @Test(arguments: [true, false])
    func aBatchComputesWhatEachSequenceAloneComputes(allowAVX512: Bool) async throws {
        let texts = ["short", "a somewhat longer sentence about banking and cards", "", String(repeating: "word ", count: 300)]
        let (batch, alone, longest) = try await Self.offPool {
            let encoder = try Self.encoder(allowAVX512: allowAVX512)
            return (encoder.embed(batch: texts.map(encoder.tokenizer.encode)), texts.map(encoder.embed),
                    encoder.tokenizer.encode(texts[3]).count)
        }
        for (text, (batched, single)) in zip(texts, zip(batch, alone)) {
            let cosine = zip(single, batched).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            #expect(cosine > 0.99999, "\(text.prefix(20))")
        }
        #expect(longest == 256)
    }

    /// A batch with enough tokens is split by sequence across the cores; each answer must still be its own text's.
    @Test(arguments: [true, false])
    func aBatchSplitAcrossCoresKeepsEachSequencesEmbedding(allowAVX512: Bool) async throws {
        let texts = (0..<7).map { "question \($0): " + String(repeating: "why was my card payment declined again ", count: 2 + $0) }
        let (tokens, batch, alone) = try await Self.offPool {
            let encoder = try Self.encoder(allowAVX512: allowAVX512)
            let ids = texts.map(encoder.tokenizer.encode)
            return (ids.reduce(0) { $0 + $1.count }, encoder.embed(batch: ids),
                    ids.map { encoder.encode(batch: [$0], workers: 1)[0] })
        }
        #expect(tokens >= MiniLMEncoder.tokensPerGroup * 2)
        #expect(batch.count == texts.count)
        for (text, (batched, single)) in zip(texts, zip(batch, alone)) {
            let cosine = zip(single, batched).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            #expect(cosine > 0.99999, "\(text.prefix(20))")
        }
    }
}

extension EmbeddingsTests {
    /// Every product's two halves run exactly once, whoever runs them: the helper, or the caller when the helper
    /// has not picked its half up yet. Slow first halves leave the second to the helper; with tiny ones the caller
    /// often claims it first.
    @Test func thePairWorkerRunsEachHalfOnce() async throws {
        let counts = try await Self.offPool {
            let worker = PairWorker()
            let halves = Locked([Int](repeating: 0, count: 2 * 2000))
            worker.session { pair in
                guard let pair else { return }
                for product in 0..<2000 {
                    pair.run { half in
                        if half == 0, product % 5 == 0 { usleep(50) }
                        if half == 1, product % 7 == 0 { usleep(50) }
                        halves.withLock { $0[product * 2 + half] += 1 }
                    }
                }
            }
            return halves.withLock { $0 }
        }
        #expect(counts.allSatisfy { $0 == 1 })
    }

    /// Encodings that run at once (the pair worker serves one of them; the others split by `DispatchQueue` or run
    /// alone) give each text the embedding it gets on one core.
    @Test func concurrentEncodingsAgreeWithOneCore() async throws {
        let texts = (0..<6).map { "query \($0) about a card that was declined at the shop " + String(repeating: "again ", count: $0) }
        let (together, alone) = try await Self.offPool {
            let encoder = try Self.encoder()
            let ids = texts.map(encoder.tokenizer.encode)
            let results = Locked([[Float]](repeating: [], count: texts.count))
            DispatchQueue.concurrentPerform(iterations: texts.count) { index in
                let vector = encoder.embed(ids: ids[index])
                results.withLock { $0[index] = vector }
            }
            return (results.withLock { $0 }, ids.map { encoder.encode(batch: [$0], workers: 1)[0] })
        }
        for (text, (concurrent, single)) in zip(texts, zip(together, alone)) {
            let cosine = zip(single, concurrent).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            #expect(cosine > 0.99999, "\(text.prefix(20))")
        }
    }
}

/// `POST /v1/embeddings` on an in-process gateway.
@Suite struct EmbeddingsEndpointTests {
    static func post(_ url: String, _ body: String) async throws -> (status: Int, json: JSONValue) {
        let response = try await send("\(url)/v1/embeddings", body: body)
        return (response.status, try JSONValue.parse(response.body))
    }

    @Test func servesFloatAndBase64VectorsWithUsage() async throws {
        let store = ModelStore()
        #expect(store.isAvailable, "run `swift run switchyard models pull`")
        let encoder = try MiniLMEncoder(directory: store.modelDirectory)
        try await withTestGateway(embeddings: .model(directory: store.modelDirectory)) { _, url in
            let floats = try await Self.post(url, #"{"model":"all-MiniLM-L6-v2","input":["Hello world",""]}"#)
            #expect(floats.status == 200)
            let data = floats.json["data"]?.arrayValue ?? []
            #expect(data.count == 2)
            let first = (data[0]["embedding"]?.arrayValue ?? []).compactMap { $0.doubleValue.map(Float.init) }
            #expect(first.count == 384)
            let expected = encoder.embed("Hello world")
            #expect(zip(first, expected).allSatisfy { abs($0 - $1) < 1e-6 })
            #expect((data[1]["embedding"]?.arrayValue ?? []).count == 384)  // the empty string has an embedding too
            #expect(floats.json["usage"]?["prompt_tokens"] == .int(Int64(encoder.tokenizer.encode("Hello world").count + 2)))

            let encoded = try await Self.post(url, #"{"model":"local-embedding","input":"Hello world","encoding_format":"base64"}"#)
            let text = encoded.json["data"]?.arrayValue?.first?["embedding"]?.stringValue ?? ""
            let bytes = [UInt8](Data(base64Encoded: text) ?? Data())
            #expect(bytes.count == 384 * 4)
            let decoded = stride(from: 0, to: bytes.count, by: 4).map { offset in
                Float(bitPattern: UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24)
            }
            #expect(decoded == first)
        }
    }

    @Test func tooManyTokensInOneRequestIsA400() async throws {
        let store = ModelStore()
        try await withTestGateway(embeddings: .model(directory: store.modelDirectory)) { _, url in
            // 300 inputs of about 255 tokens each: over the per-request token cap, refused before any inference.
            let text = String(repeating: "word ", count: 300)
            let inputs = Array(repeating: "\"\(text)\"", count: 300).joined(separator: ",")
            let started = ContinuousClock.now
            let refused = try await Self.post(url, #"{"model":"local-embedding","input":[\#(inputs)]}"#)
            #expect(refused.status == 400)
            #expect(refused.json["error"]?["message"]?.stringValue?.contains("tokens per request") == true)
            #expect(ContinuousClock.now - started < .seconds(5))
        }
    }

    @Test func aSmallQueryIsNotHeldBehindALargeBatch() async throws {
        let store = ModelStore()
        let batcher = EmbeddingBatcher(encoder: try MiniLMEncoder(directory: store.modelDirectory), maximumBatchTokens: 512,
                                       sliceTokens: 256)
        let tokenizer = batcher.encoder.tokenizer
        let large = Array(repeating: tokenizer.encode(String(repeating: "gateway ", count: 100)), count: 64)
        let order = Locked<[String]>([])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                _ = await batcher.embed(large)
                order.withLock { $0.append("large") }
            }
            // Once the large request is being computed, a one-line query arrives.
            while batcher.queuedTokens == 0 { try await Task.sleep(for: .milliseconds(1)) }
            group.addTask {
                _ = await batcher.embed([tokenizer.encode("Is my card blocked?")])
                order.withLock { $0.append("small") }
            }
            try await group.waitForAll()
        }
        // 64 sequences of about 100 tokens take a dozen passes; the query rides in the next one.
        #expect(order.withLock { $0 } == ["small", "large"])
    }

    @Test func concurrentRequestsAreAllAnswered() async throws {
        let store = ModelStore()
        try await withTestGateway(embeddings: .model(directory: store.modelDirectory)) { _, url in
            try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<16 {
                    group.addTask { try await Self.post(url, #"{"model":"local-embedding","input":"question number \#(index)"}"#).status }
                }
                for try await status in group { #expect(status == 200) }
            }
        }
    }

    @Test(arguments: [
        (#"{"model":"all-MiniLM-L6-v2","input":[[1,2,3]]}"#, 400, "token-id"),
        (#"{"model":"all-MiniLM-L6-v2","input":[1,2,3]}"#, 400, "token-id"),
        (#"{"model":"all-MiniLM-L6-v2","input":["ok",{"a":1}]}"#, 400, "input[1]"),
        (#"{"model":"all-MiniLM-L6-v2","input":"x","dimensions":512}"#, 400, "384"),
        (#"{"model":"all-MiniLM-L6-v2","input":"x","encoding_format":"int8"}"#, 400, "encoding_format"),
        (#"{"model":"text-embedding-3-large","input":"x"}"#, 404, "does not exist"),
        (#"{"model":"all-MiniLM-L6-v2"}"#, 400, "input"),
        (#"{"model":"all-MiniLM-L6-v2","input":[]}"#, 400, "empty"),
        (#"not json"#, 400, "JSON"),
    ])
    func badInputIsA400InTheOpenAIEnvelope(_ testCase: (String, Int, String)) async throws {
        try await withTestGateway(embeddings: .model(directory: ModelStore().modelDirectory)) { _, url in
            let response = try await send("\(url)/v1/embeddings", body: testCase.0)
            #expect(response.status == testCase.1)
            let message = try JSONValue.parse(response.body)["error"]?["message"]?.stringValue ?? ""
            #expect(message.contains(testCase.2), "\(message)")
        }
    }

    @Test func moreThan2048InputsAreRefused() async throws {
        let inputs = "[" + Array(repeating: "\"x\"", count: 2049).joined(separator: ",") + "]"
        try await withTestGateway(embeddings: .model(directory: ModelStore().modelDirectory)) { _, url in
            let response = try await Self.post(url, #"{"model":"all-MiniLM-L6-v2","input":\#(inputs)}"#)
            #expect(response.status == 400)
        }
    }

    @Test func withoutTheModelTheEndpointSaysWhy() async throws {
        try await withTestGateway(embeddings: .unavailable("pip could not reach PyPI")) { _, url in
            let response = try await Self.post(url, #"{"model":"all-MiniLM-L6-v2","input":"x"}"#)
            #expect(response.status == 503)
            #expect(response.json["error"]?["message"]?.stringValue?.contains("pip could not reach PyPI") == true)
        }
    }
}
