import Caching
import SwitchyardCore
import SwitchyardModels
import Testing

/// The learned pair verifier's file, the calibration state the gateway keeps, and the evaluation's causality.
@Suite struct PairVerifierTests {
    struct HashedWords: WordVectors {
        func vector(ofWord word: String) -> [Float] {
            var state = UInt64(truncatingIfNeeded: word.utf8.reduce(5381) { ($0 &* 33) &+ Int($1) })
            var vector = (0..<PairVerifier.dimension).map { _ -> Float in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return Float(Int64(bitPattern: state >> 11) % 1000) / 1000
            }
            let norm = vector.reduce(0) { $0 + $1 * $1 }.squareRoot()
            for index in vector.indices { vector[index] /= norm }
            return vector
        }
    }

    static func verifier() -> PairVerifier {
        let count = PairVerifier.featureCount
        var weights = [Double](repeating: 0, count: count)
        weights[0] = 4  // the cosine
        weights[6] = -3  // one word replaced by another
        return PairVerifier(mean: [Double](repeating: 0, count: count), scale: [Double](repeating: 1, count: count),
                            model: LogisticRegression(weights: weights, bias: -2), threshold: 0.7, minimumSimilarity: 0.8,
                            training: ["note": "test"])
    }

    @Test func theFileRoundTripsAndAMismatchedOneIsRefused() throws {
        let verifier = Self.verifier()
        let text = verifier.fileText()
        let loaded = try PairVerifier(json: try JSONValue.parse(Array(text.utf8)))
        #expect(loaded.largestDifference(from: verifier) == 0)
        #expect(loaded.threshold == 0.7 && loaded.minimumSimilarity == 0.8)

        func refused(_ edit: (inout [String: JSONValue]) -> Void) -> String? {
            guard case .object(var object) = try? JSONValue.parse(Array(text.utf8)) else { return "unparsed" }
            edit(&object)
            do {
                _ = try PairVerifier(json: .object(object))
                return nil
            } catch {
                return error.description
            }
        }
        #expect(refused { $0["version"] = 2 }?.contains("version 2 is not 1") == true)
        #expect(refused { $0["format"] = "switchyard-complexity-classifier" }?.contains("not a switchyard-pair-verifier") == true)
        #expect(refused { $0["embedding"] = ["model": "bge-small", "dimension": 384] }?.contains("another embedding") == true)
        #expect(refused { $0["scalar_features"] = ["cosine"] }?.contains("features") == true)
        #expect(refused { $0["weights"] = [1, 2, 3] }?.contains("'weights' must be") == true)
        #expect(refused { $0["threshold"] = 1.5 }?.contains("'threshold'") == true)
        #expect(refused { $0["scale"] = .array([JSONValue](repeating: 0, count: PairVerifier.featureCount)) }?.contains("positive") == true)
    }

    @Test func aReplacedWordIsSeenAndLowersTheProbability() {
        let verifier = Self.verifier()
        let words = HashedWords()
        let vector = words.vector(ofWord: "sentence")
        let query = PairVerifier.PairText(text: "How do I activate my debit card?", vector: vector)
        let same = PairVerifier.PairText(text: "how do i activate my debit card", vector: vector)
        let substituted = PairVerifier.PairText(text: "How do I activate my credit card?", vector: vector)
        let features = PairVerifier.features(query, substituted, words: words, projection: [])
        #expect(features[6] == 1 && features[7] == 0)
        #expect(PairVerifier.features(query, same, words: words, projection: [])[7] == 1)
        #expect(verifier.probability(query: query, candidate: substituted, words: words)
                < verifier.probability(query: query, candidate: same, words: words))
        // Vectors of another size are never a match.
        #expect(verifier.probability(query: PairVerifier.PairText(text: "x", vector: [1]), candidate: same, words: words) == 0)
    }

    @Test func calibrationIsPerTenantAndFeedbackLabelsAHitOnce() {
        let calibration = SemanticCalibration(settings: .init(base: 0.9, floor: 0.5, ceiling: 0.999, step: 0.001), maximumHits: 4)
        let a = SemanticCalibration.key(tenant: "a", model: "m"), b = SemanticCalibration.key(tenant: "b", model: "m")
        // No labels: the configured threshold.
        #expect(calibration.threshold(for: a) == 0.9)
        calibration.served(entryID: "e1", key: a, score: 0.95)
        #expect(!calibration.feedback(entryID: "e1", tenant: "b", correct: true), "only the entry's tenant labels it")
        #expect(calibration.feedback(entryID: "e1", tenant: "a", correct: false))
        #expect(!calibration.feedback(entryID: "e1", tenant: "a", correct: false), "a hit is labelled once")
        #expect(calibration.threshold(for: a) > 0.95)
        #expect(calibration.threshold(for: b) == 0.9, "another tenant's labels do not move it")
        // Bounded: past four remembered hits the oldest are forgotten.
        for index in 0..<10 { calibration.served(entryID: "h\(index)", key: b, score: 0.92) }
        #expect(!calibration.feedback(entryID: "h0", tenant: "b", correct: true))
        #expect(calibration.feedback(entryID: "h9", tenant: "b", correct: true))
        // Hits served again and again stay remembered without pushing the others out.
        for index in 0..<4 { calibration.served(entryID: "r\(index)", key: b, score: 0.92) }
        for _ in 0..<1000 { calibration.served(entryID: "r0", key: b, score: 0.92) }
        #expect(calibration.feedback(entryID: "r1", tenant: "b", correct: true))
        #expect(calibration.feedback(entryID: "r0", tenant: "b", correct: true))
    }

    /// A stream of clusters: query `i` is near the others of its cluster, with some clusters close to each other
    /// so that wrong candidates exist.
    static func stream(count: Int) -> [SemanticEvaluation.StreamQuery] {
        let words = HashedWords()
        var seen: Set<Int> = []
        return (0..<count).map { index in
            let cluster = (index * 7) % 13
            let centre = words.vector(ofWord: "c\(cluster / 2)")
            let own = words.vector(ofWord: "q\(index)")
            let neighbour = words.vector(ofWord: "n\(cluster)")
            var vector = (0..<centre.count).map { centre[$0] * 3 + neighbour[$0] * 0.8 + own[$0] * 0.5 }
            let norm = vector.reduce(0) { $0 + $1 * $1 }.squareRoot()
            for d in vector.indices { vector[d] /= norm }
            let ideal = !seen.insert(cluster).inserted
            return SemanticEvaluation.StreamQuery(text: "query \(index)", intent: "i\(cluster)", idealHit: ideal, vector: vector)
        }
    }

    static let calibrated = SemanticEvaluation.Policy(
        minimumSimilarity: 0.5, guardChecks: false, threshold: 0.97,
        calibration: SemanticEvaluation.Calibration(
            settings: .init(base: 0.97, floor: 0.5, ceiling: 0.999, step: 0.005, targetPrecision: 0.9, minimumLabels: 5),
            shadowRate: 0.5, delay: 3))

    @Test func theEvaluationNeverUsesALabelFromTheFuture() {
        let queries = Self.stream(count: 400)
        let full = SemanticEvaluation.replay(queries, policy: Self.calibrated)
        // The calibration moved (otherwise this test would prove nothing)…
        #expect(Set(full.decisions.map(\.threshold)).count > 1)
        #expect(full.labels > 20)
        // …and every decision is the one a replay that stops there makes: nothing after a query changes it.
        for cut in [37, 120, 251, 399] {
            let prefix = SemanticEvaluation.replay(Array(queries.prefix(cut)), policy: Self.calibrated)
            #expect(prefix.decisions == Array(full.decisions.prefix(cut)), "cut at \(cut)")
        }
        // A query's own label (its intent) never decides it: relabel one and its decision stays.
        for index in stride(from: 50, to: 400, by: 50) {
            var relabelled = queries
            relabelled[index].intent = "other"
            let replay = SemanticEvaluation.replay(relabelled, policy: Self.calibrated)
            #expect(replay.decisions[index] == full.decisions[index], "query \(index)")
            #expect(Array(replay.decisions.prefix(index + 1)) == Array(full.decisions.prefix(index + 1)))
        }
    }
}
