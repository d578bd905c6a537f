public import SwitchyardCore
public import SwitchyardModels

/// How the pair verifier is trained: which pairs, which labels, and the conservative serving threshold. Pure
/// functions over texts and their embeddings; `switchyard train-verifier` loads the data and embeds.
///
/// The pairs are what a cache meets: each text against its nearest neighbours (the candidates a lookup returns),
/// labelled by whether the two share an intent. Intent data that needs different answers for different inputs
/// (CLINC's weather, translate, …) supplies only negatives, never "same answer" pairs. Generated negatives teach
/// what the data lacks: the same sentence with one content word replaced by its nearest word of the vocabulary
/// (nearest by input vector, not a morphological variant: "debit" → "credit", "daily" → "weekly").
public enum PairVerifierTraining {
    public struct Text: Sendable {
        public var text: String
        /// The intent; nil when the text may only be a negative (its intent's answers depend on the input).
        public var intent: String?
        /// The source, for texts of two sources that must never pair as positives.
        public var source: String
        public var vector: [Float]
        /// False for intents whose answers depend on the input (CLINC's weather, translate, …): two texts of such an
        /// intent are not paired at all, since neither label would be right for all of them.
        public var positiveAllowed: Bool

        public init(text: String, intent: String?, source: String, vector: [Float], positiveAllowed: Bool = true) {
            self.text = text
            self.intent = intent
            self.source = source
            self.vector = vector
            self.positiveAllowed = positiveAllowed
        }
    }

    public struct Pair: Sendable {
        public var first: Int
        public var second: Int
        public var positive: Bool
    }

    /// Each text with its `neighbours` nearest others at cosine `minimum` or more (each unordered pair once).
    /// Positive: same source and same non-nil intent; same intent where positives are not allowed: left out.
    public static func neighbourPairs(_ texts: [Text], neighbours: Int, minimum: Float) -> [Pair] {
        var pairs: [Pair] = []
        var seen: Set<Int64> = []
        for index in texts.indices {
            var best: [(Float, Int)] = []
            for other in texts.indices where other != index {
                let similarity = InMemorySemanticCache.dot(texts[index].vector, texts[other].vector)
                guard similarity >= minimum else { continue }
                if best.count < neighbours {
                    best.append((similarity, other))
                    best.sort { $0.0 > $1.0 }
                } else if let last = best.last, similarity > last.0 {
                    best[best.count - 1] = (similarity, other)
                    best.sort { $0.0 > $1.0 }
                }
            }
            for (_, other) in best {
                let key = Int64(min(index, other)) << 32 | Int64(max(index, other))
                guard seen.insert(key).inserted else { continue }
                let a = texts[index], b = texts[other]
                if a.source == b.source, a.intent == b.intent, !a.positiveAllowed || !b.positiveAllowed { continue }
                let positive = a.source == b.source && a.intent != nil && a.intent == b.intent
                pairs.append(Pair(first: index, second: other, positive: positive))
            }
        }
        return pairs
    }

    /// Sentences with one content word replaced by its nearest other word of `vocabulary` (by input vector,
    /// excluding the word's own inflections), at most `limit`, one per sentence, taking sentences in order.
    public static func substitutions(of sentences: [String], vocabulary: [String], words: any WordVectors, limit: Int)
        -> [(original: String, substituted: String)]
    {
        let vectors = vocabulary.map { words.vector(ofWord: $0) }
        var nearest: [String: String] = [:]
        func neighbour(of word: String) -> String? {
            if let known = nearest[word] { return known.isEmpty ? nil : known }
            guard let index = vocabulary.firstIndex(of: word) else { return nil }
            var best: (Float, Int)?
            for other in vocabulary.indices where other != index && !inflection(vocabulary[other], of: word) {
                let similarity = InMemorySemanticCache.dot(vectors[index], vectors[other])
                if let current = best, similarity <= current.0 { continue }
                best = (similarity, other)
            }
            let found = best.map { vocabulary[$0.1] }
            nearest[word] = found ?? ""
            return found
        }
        let known = Set(vocabulary)
        var result: [(String, String)] = []
        for (position, sentence) in sentences.enumerated() where result.count < limit {
            let tokens = SemanticGuard.tokens(sentence).map(\.text).filter { !$0.isEmpty }
            let content = tokens.filter { known.contains($0.lowercased()) }
            guard !content.isEmpty else { continue }
            // A different word each time (the sentence's position picks it), so substitutions are not all of the
            // first noun.
            let word = content[position % content.count]
            guard let replacement = neighbour(of: word.lowercased()) else { continue }
            guard let substituted = replacingFirst(word, with: replacement, in: sentence) else { continue }
            result.append((sentence, substituted))
        }
        return result
    }

    /// `text` with the first occurrence of `word` replaced.
    static func replacingFirst(_ word: String, with replacement: String, in text: String) -> String? {
        let characters = Array(text), target = Array(word)
        guard !target.isEmpty, characters.count >= target.count else { return nil }
        for start in 0...(characters.count - target.count) where Array(characters[start..<(start + target.count)]) == target {
            return String(characters[..<start]) + replacement + String(characters[(start + target.count)...])
        }
        return nil
    }

    /// Whether `word` is `base` with an ending (cards, activation, activated): a variant, not a substitute.
    static func inflection(_ word: String, of base: String) -> Bool {
        let stem = max(3, min(word.count, base.count) - 2)
        return word.hasPrefix(base.prefix(stem)) || base.hasPrefix(word.prefix(stem))
    }

    /// Content words of `sentences` used at least `minimumCount` times, alphabetic and at least 3 letters, sorted.
    public static func vocabulary(of sentences: [String], minimumCount: Int) -> [String] {
        var counts: [String: Int] = [:]
        for sentence in sentences {
            for token in SemanticGuard.tokens(sentence) where !token.text.isEmpty {
                let word = token.text.lowercased()
                guard word.count >= 3, word.allSatisfy(\.isLetter), !PairVerifier.functionWords.contains(word),
                      !SemanticGuard.isNegation(word), !SemanticGuard.relationWords.contains(word) else { continue }
                counts[word, default: 0] += 1
            }
        }
        return counts.filter { $0.value >= minimumCount }.keys.sorted()
    }

    /// Fits the verifier on feature rows: the main model on every row but generated ones, the edit head on the small
    /// edits (generated or not). The threshold is the lowest probability at which the `validation` rows served
    /// (probability at or above it) have precision `targetPrecision` or more.
    public static func fit(rows: [[Double]], labels: [Bool], generated: [Bool], validation: [([Double], Bool)],
                           targetPrecision: Double, minimumSimilarity: Double, settings: LogisticRegression.Settings,
                           training: [String: JSONValue]) -> PairVerifier {
        let (mean, scale) = Standardisation.fit(rows)
        let standardised = rows.map { row in row.indices.map { (row[$0] - mean[$0]) / scale[$0] } }
        let main = rows.indices.filter { !generated[$0] }
        let edits = rows.indices.filter { PairVerifier.isSmallEdit(rows[$0]) }
        let model = LogisticRegression.fit(rows: main.map { standardised[$0] }, labels: main.map { labels[$0] ? 1 : 0 },
                                           settings: settings)
        let edit = LogisticRegression.fit(rows: edits.map { standardised[$0] }, labels: edits.map { labels[$0] ? 1 : 0 },
                                          settings: settings)
        var verifier = PairVerifier(mean: mean, scale: scale, model: model, edit: edit, threshold: 0.5,
                                    minimumSimilarity: minimumSimilarity, training: training)
        let scored = validation.map { (verifier.probability(features: $0.0), $0.1) }.sorted { $0.0 > $1.0 }
        verifier.threshold = threshold(scored, targetPrecision: targetPrecision)
        return verifier
    }

    /// The lowest score whose served set (every score at or above it, `scored` sorted high to low) has precision
    /// `targetPrecision`; 1 when no prefix reaches it.
    static func threshold(_ scored: [(Double, Bool)], targetPrecision: Double) -> Double {
        var right = 0, chosen = 1.0
        for (index, (score, correct)) in scored.enumerated() {
            if correct { right += 1 }
            let next = index + 1 < scored.count ? scored[index + 1].0 : -1
            // Only between distinct scores: a tie is served or refused as one.
            if next < score, Double(right) / Double(index + 1) >= targetPrecision { chosen = score }
        }
        return chosen
    }
}
