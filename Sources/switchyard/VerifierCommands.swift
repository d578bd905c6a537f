import ArgumentParser
import Caching
import Embeddings
import Foundation
import Routing
import Server
import SwitchyardCore
import SwitchyardModels

/// Embeddings of many texts, kept in the model cache folder keyed by the texts' hash (embedding 20,000 texts takes
/// minutes on 2 cores; the evaluations and the training commands embed the same files again and again).
enum CachedEmbeddings {
    static func embed(_ texts: [String], encoder: MiniLMEncoder, root: String, label: String) -> [[Float]] {
        let key = KeyHash.sha256Hex(texts.joined(separator: "\u{0}")).prefix(16)
        let cache = "\(root)/\(label)-embeddings-\(key).f32"
        let dimension = MiniLMEncoder.dimension
        if let data = FileManager.default.contents(atPath: cache), data.count == texts.count * dimension * 4 {
            let floats = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            return (0..<texts.count).map { Array(floats[($0 * dimension)..<(($0 + 1) * dimension)]) }
        }
        var embeddings: [[Float]] = []
        embeddings.reserveCapacity(texts.count)
        let started = Date()
        for start in stride(from: 0, to: texts.count, by: 64) {
            embeddings.append(contentsOf: encoder.embed(batch: texts[start..<min(start + 64, texts.count)].map(encoder.tokenizer.encode)))
        }
        try? embeddings.flatMap { $0 }.withUnsafeBytes { Data($0) }.write(to: URL(fileURLWithPath: cache))
        FileHandle.standardError.write(Data("embedded \(texts.count) texts in \(Int(Date().timeIntervalSince(started))) s (kept in \(cache))\n".utf8))
        return embeddings
    }

    static func encoder(_ store: ModelStore) throws -> MiniLMEncoder {
        do {
            return try MiniLMEncoder(directory: store.modelDirectory)
        } catch {
            throw ValidationError("no embedding model (run `switchyard models pull`): \(error)")
        }
    }
}

/// The verifier's training data, none of it from the evaluation stream or the adversarial set: Banking77's train
/// split (four fifths fit, one fifth chooses the threshold), CLINC150's in-scope train split (negatives only), even
/// GPTCache pairs (positives; the odd ones are the evaluation's), and generated substitutions.
struct VerifierData {
    var fit: [PairVerifierTraining.Text] = []
    var validation: [PairVerifierTraining.Text] = []
    var paraphrases: [(String, String)] = []

    static func load(cacheData: String) throws -> VerifierData {
        var data = VerifierData()
        let banking = try CSVProbe.parse(String(contentsOfFile: "\(cacheData)/banking77_train.csv", encoding: .utf8))
        for (index, row) in banking.dropFirst().enumerated() where row.count >= 2 {
            let text = PairVerifierTraining.Text(text: row[0], intent: row[1], source: "banking77", vector: [])
            if index % 5 == 4 { data.validation.append(text) } else { data.fit.append(text) }
        }
        let clinc = try JSONValue.parse(Array(Data(contentsOf: URL(fileURLWithPath: "\(cacheData)/clinc150_data_full.json"))))
        for (index, row) in (clinc["train"]?.arrayValue ?? []).enumerated() where index % 5 == 0 {
            guard let text = row.arrayValue?.first?.stringValue, let intent = row.arrayValue?.last?.stringValue else { continue }
            data.fit.append(PairVerifierTraining.Text(text: text, intent: intent, source: "clinc150", vector: [], positiveAllowed: false))
        }
        let gptcache = try JSONValue.parse(Array(Data(contentsOf: URL(fileURLWithPath: "\(cacheData)/gptcache_mock_data.json"))))
        for (index, pair) in (gptcache.arrayValue ?? []).enumerated() where index % 2 == 0 {
            guard let a = pair["origin"]?.stringValue, let b = pair["similar"]?.stringValue else { continue }
            data.paraphrases.append((a, b))
        }
        return data
    }
}

/// Fits the semantic cache's pair verifier and writes its file.
struct TrainVerifier: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-verifier",
        abstract: "Fit the semantic cache's pair verifier on training data (never the evaluation stream) and write its file.")

    @Option(help: "Folder with the cache evaluation files.") var data = "../shared/data/cache"
    @Option(help: "Model cache folder.") var dir: String?
    @Option(help: "Where to write the verifier file.") var output = "Sources/Caching/pair-verifier-v1.json"
    @Option(help: "Nearest neighbours per text that become pairs.") var neighbours = 40
    @Option(help: "Candidates less similar than this are never served (and not trained on).") var minimumSimilarity = 0.80
    @Option(help: "Feature blocks left out (their weights stay 0), comma-separated: product, difference, changed.")
    var drop = ""
    @Option(help: "Pairs less similar than this are not trained on.") var pairMinimum = 0.60
    @Option(help: "Generated one-word substitutions (negatives).") var substitutions = 3000
    @Option(help: "A substitute's uses may share at most this share of intents with the word's (1: any word, synonyms too).")
    var contrastOverlap = 1.0
    @Option(help: "How many times each GPTCache positive counts (general-domain rephrasings are few beside Banking77's).")
    var paraphraseWeight = 10
    @Option(help: "Discriminant directions whose cosine is a feature (0: none).") var rank = 64
    @Option(help: "Precision on the validation pairs that the starting threshold keeps.") var targetPrecision = 0.995
    @Option(help: "L2 penalty.") var l2 = 1.0
    @Option(help: "Adam iterations.") var iterations = 300
    @Option(help: "Write nothing: train, then compare with this file (the committed one) and fail if they differ.")
    var check: String?

    func run() throws {
        let store = ModelStore(root: dir)
        let encoder = try CachedEmbeddings.encoder(store)
        let words = EncoderWordVectors(encoder: encoder)
        var loaded = try VerifierData.load(cacheData: data)
        let started = Date()
        func embed(_ texts: inout [PairVerifierTraining.Text], _ label: String) {
            let vectors = CachedEmbeddings.embed(texts.map(\.text), encoder: encoder, root: store.root, label: label)
            for index in texts.indices { texts[index].vector = vectors[index] }
        }
        embed(&loaded.fit, "verifier-fit")
        embed(&loaded.validation, "verifier-validation")

        let projection = PairVerifierTraining.discriminantProjection(loaded.fit, rank: rank)
        FileHandle.standardError.write(Data("discriminant projection of rank \(projection.count / PairVerifier.dimension) in \(Int(Date().timeIntervalSince(started))) s\n".utf8))
        let dropped = Set(drop.split(separator: ",").map(String.init))
        let blocks = ["product": 0, "difference": 1, "changed": 2]
        let base = PairVerifier.scalarFeatureNames.count, dimension = PairVerifier.dimension
        func masked(_ features: [Double]) -> [Double] {
            var features = features
            for name in dropped {
                guard let block = blocks[name] else { continue }
                for index in 0..<dimension { features[base + block * dimension + index] = 0 }
            }
            return features
        }
        var rows: [[Double]] = [], labels: [Bool] = [], generated: [Bool] = []
        var counts: [String: Int] = [:]
        var hashed: [UInt8] = []
        func add(_ a: PairVerifier.PairText, _ aText: String, _ b: PairVerifier.PairText, _ bText: String, _ positive: Bool,
                 _ kind: String, weight: Int = 1) {
            // The guard runs first when serving: what it refuses never reaches the verifier.
            guard Double(InMemorySemanticCache.dot(a.vector, b.vector)) >= pairMinimum,
                  SemanticGuard.check(aText, against: bText) == nil else { return }
            let features = masked(PairVerifier.features(a, b, words: words, projection: projection))
            for _ in 0..<max(1, weight) {
                rows.append(features)
                labels.append(positive)
                generated.append(kind == "substitutions")
            }
            if PairVerifier.isSmallEdit(features) { counts["small edits \(positive ? "positive" : "negative")", default: 0] += 1 }
            hashed += Array(aText.utf8) + [0] + Array(bText.utf8) + [positive ? 1 : 0]
            counts["\(kind) \(positive ? "positive" : "negative")", default: 0] += 1
        }
        let fitTexts = loaded.fit.map { PairVerifier.PairText(text: $0.text, vector: $0.vector) }
        for pair in PairVerifierTraining.neighbourPairs(loaded.fit, neighbours: neighbours, minimum: Float(pairMinimum)) {
            add(fitTexts[pair.first], loaded.fit[pair.first].text, fitTexts[pair.second], loaded.fit[pair.second].text,
                pair.positive, "neighbours")
        }
        let bankingTexts = loaded.fit.filter { $0.source == "banking77" }
        let banking = bankingTexts.map(\.text)
        let vocabulary = PairVerifierTraining.vocabulary(of: banking, minimumCount: 3)
        let substituted = PairVerifierTraining.substitutions(of: banking, intents: contrastOverlap < 1 ? bankingTexts.map { $0.intent ?? "" } : nil,
                                                             maximumOverlap: contrastOverlap, vocabulary: vocabulary, words: words,
                                                             limit: substitutions)
        let substitutedVectors = CachedEmbeddings.embed(substituted.map(\.substituted), encoder: encoder, root: store.root,
                                                        label: "verifier-substitutions")
        let originals = Dictionary(zip(loaded.fit.map(\.text), loaded.fit.map(\.vector)), uniquingKeysWith: { a, _ in a })
        for (index, pair) in substituted.enumerated() {
            guard let original = originals[pair.original] else { continue }
            add(PairVerifier.PairText(text: pair.original, vector: original), pair.original,
                PairVerifier.PairText(text: pair.substituted, vector: substitutedVectors[index]), pair.substituted,
                false, "substitutions")
        }
        let paraphraseVectors = CachedEmbeddings.embed(loaded.paraphrases.flatMap { [$0.0, $0.1] }, encoder: encoder,
                                                       root: store.root, label: "verifier-paraphrases")
        for (index, pair) in loaded.paraphrases.enumerated() {
            add(PairVerifier.PairText(text: pair.0, vector: paraphraseVectors[2 * index]), pair.0,
                PairVerifier.PairText(text: pair.1, vector: paraphraseVectors[2 * index + 1]), pair.1, true,
                "gptcache", weight: paraphraseWeight)
        }
        let validationTexts = loaded.validation.map { PairVerifier.PairText(text: $0.text, vector: $0.vector) }
        var validation: [([Double], Bool)] = []
        for pair in PairVerifierTraining.neighbourPairs(loaded.validation, neighbours: neighbours, minimum: Float(minimumSimilarity))
        where SemanticGuard.check(loaded.validation[pair.first].text, against: loaded.validation[pair.second].text) == nil {
            validation.append((masked(PairVerifier.features(validationTexts[pair.first], validationTexts[pair.second], words: words, projection: projection)), pair.positive))
        }
        let dataHash = KeyHash.sha256Hex(bytes: hashed)
        let settings = LogisticRegression.Settings(l2: l2, iterations: iterations)
        let training: [String: JSONValue] = [
            "pairs": .object(counts.mapValues { .int(Int64($0)) }), "validation_pairs": .int(Int64(validation.count)),
            "target_precision": .double(targetPrecision), "l2": .double(l2), "iterations": .int(Int64(iterations)),
            "neighbours": .int(Int64(neighbours)), "data_sha256": .string(dataHash),
            "paraphrase_weight": .int(Int64(paraphraseWeight)), "rank": .int(Int64(rank)), "substitutions": .int(Int64(substitutions)),
            "contrast_overlap": .double(contrastOverlap),
            "sources": "banking77_train.csv (4/5 fit, 1/5 validation), clinc150 train (every 5th, negatives only), gptcache even pairs, substitutions",
        ]
        let verifier = PairVerifierTraining.fit(rows: rows, labels: labels, generated: generated, validation: validation, projection: projection, targetPrecision: targetPrecision,
                                                minimumSimilarity: minimumSimilarity, settings: settings, training: training)
        func auc(_ scored: [(Double, Bool)]) -> Double {
            let sorted = scored.sorted { $0.0 < $1.0 }
            var negatives = 0.0, area = 0.0
            for (_, positive) in sorted { if positive { area += negatives } else { negatives += 1 } }
            let positives = Double(scored.filter(\.1).count)
            return positives * negatives == 0 ? 0 : area / (positives * negatives)
        }
        FileHandle.standardError.write(Data("validation AUC: verifier \(auc(validation.map { (verifier.probability(features: $0.0), $0.1) })), cosine \(auc(validation.map { ($0.0[0], $0.1) }))\n".utf8))
        FileHandle.standardError.write(Data("trained on \(rows.count) pairs (\(counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))), validated on \(validation.count), in \(Int(Date().timeIntervalSince(started))) s\n".utf8))
        if let check {
            let committed: PairVerifier
            do {
                committed = try PairVerifier.load(path: check)
            } catch {
                throw ValidationError(error.description)
            }
            let difference = committed.largestDifference(from: verifier)
            let same = committed.training["data_sha256"] == verifier.training["data_sha256"] && difference <= 1e-3
            print("\(check): largest difference in any number \(difference) (tolerance 0.001), training data "
                  + "\(committed.training["data_sha256"] == verifier.training["data_sha256"] ? "identical" : "DIFFERENT"): "
                  + (same ? "reproduced" : "NOT reproduced"))
            if !same { throw ExitCode.failure }
            return
        }
        try verifier.fileText().write(toFile: output, atomically: true, encoding: .utf8)
        print("wrote \(output): threshold \(verifier.threshold) (validation precision ≥ \(targetPrecision)), \(rows.count) pairs")
    }
}
