import Embeddings
import Foundation
import SwitchyardModels
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

    static func encoder() throws -> MiniLMEncoder {
        let store = ModelStore()
        guard store.isAvailable else {
            throw EmbeddingError.modelUnavailable("no model in \(store.root): run `swift run switchyard models pull` (scripts/test.sh does)")
        }
        return try MiniLMEncoder(directory: store.modelDirectory)
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

    @Test func embeddingsMatchTheReferenceToCosine0_9999() throws {
        let encoder = try Self.encoder()
        var worst: Float = 1
        for reference in try Self.references() {
            let vector = encoder.embed(ids: reference.ids)
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
        print("worst cosine against sentence-transformers: \(worst)")
    }
}

extension EmbeddingsTests {
    @Test func aBatchComputesWhatEachSequenceAloneComputes() throws {
        let encoder = try Self.encoder()
        let texts = ["short", "a somewhat longer sentence about banking and cards", "", String(repeating: "word ", count: 300)]
        let batch = encoder.embed(batch: texts.map(encoder.tokenizer.encode))
        for (text, batched) in zip(texts, batch) {
            let alone = encoder.embed(text)
            let cosine = zip(alone, batched).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            #expect(cosine > 0.99999, "\(text.prefix(20))")
        }
        #expect(encoder.tokenizer.encode(texts[3]).count == 256)
    }
}
