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
    ///
    /// With `intents` (one per sentence), a replacement must also be used for other intents than the word: the
    /// share of their uses in common intents (the overlap of their intent histograms) at most `maximumOverlap`. Two
    /// words of one kind that the data uses for different things ("debit" / "credit") are a contrast; two used
    /// for the same things are synonyms, and a synonym is no negative.
    public static func substitutions(of sentences: [String], intents: [String]? = nil, maximumOverlap: Double = 1,
                                     vocabulary: [String], words: any WordVectors, limit: Int)
        -> [(original: String, substituted: String)]
    {
        let vectors = vocabulary.map { words.vector(ofWord: $0) }
        let histograms = intents.map { intentHistograms(of: sentences, intents: $0, vocabulary: vocabulary) } ?? [:]
        var nearest: [String: String] = [:]
        func neighbour(of word: String) -> String? {
            if let known = nearest[word] { return known.isEmpty ? nil : known }
            guard let index = vocabulary.firstIndex(of: word) else { return nil }
            var best: (Float, Int)?
            for other in vocabulary.indices where other != index && !inflection(vocabulary[other], of: word)
                && (histograms.isEmpty || overlap(histograms[word], histograms[vocabulary[other]]) <= maximumOverlap) {
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

    /// Per vocabulary word, the share of its sentences in each intent.
    static func intentHistograms(of sentences: [String], intents: [String], vocabulary: [String]) -> [String: [String: Double]] {
        let known = Set(vocabulary)
        var counts: [String: [String: Double]] = [:]
        for (sentence, intent) in zip(sentences, intents) {
            for word in Set(SemanticGuard.tokens(sentence).map { $0.text.lowercased() }) where known.contains(word) {
                counts[word, default: [:]][intent, default: 0] += 1
            }
        }
        return counts.mapValues { histogram in
            let total = histogram.values.reduce(0, +)
            return histogram.mapValues { $0 / max(total, 1) }
        }
    }

    /// The overlap of two intent histograms, 0 (no intent in common) to 1 (the same use); 1 when either is unknown.
    static func overlap(_ a: [String: Double]?, _ b: [String: Double]?) -> Double {
        guard let a, let b else { return 1 }
        return a.reduce(0) { sum, entry in sum + min(entry.value, b[entry.key] ?? 0) }
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
                           projection: [Float], targetPrecision: Double, minimumSimilarity: Double,
                           settings: LogisticRegression.Settings, training: [String: JSONValue]) -> PairVerifier {
        let (mean, scale) = Standardisation.fit(rows)
        let standardised = rows.map { row in row.indices.map { (row[$0] - mean[$0]) / scale[$0] } }
        let main = rows.indices.filter { !generated[$0] }
        let edits = rows.indices.filter { PairVerifier.isSmallEdit(rows[$0]) }
        let model = LogisticRegression.fit(rows: main.map { standardised[$0] }, labels: main.map { labels[$0] ? 1 : 0 },
                                           settings: settings)
        let edit = LogisticRegression.fit(rows: edits.map { standardised[$0] }, labels: edits.map { labels[$0] ? 1 : 0 },
                                          settings: settings)
        var verifier = PairVerifier(mean: mean, scale: scale, model: model, edit: edit, projection: projection, threshold: 0.5,
                                    minimumSimilarity: minimumSimilarity, training: training)
        let scored = validation.map { (verifier.probability(features: $0.0), $0.1) }.sorted { $0.0 > $1.0 }
        verifier.threshold = threshold(scored, targetPrecision: targetPrecision)
        return verifier
    }

    /// Linear discriminant directions of the texts' intents (texts whose intent may pair as positives): the `rank`
    /// directions along which intents differ most relative to how much one intent's texts vary. Within-intent
    /// scatter is regularised by `ridge` times its mean eigenvalue, so rarely-varying directions do not blow up.
    /// Rows of `PairVerifier.dimension`, row-major.
    public static func discriminantProjection(_ texts: [Text], rank: Int, ridge: Double = 0.1) -> [Float] {
        let d = PairVerifier.dimension
        let usable = texts.filter { $0.positiveAllowed && $0.intent != nil && $0.vector.count == d }
        guard rank > 0, !usable.isEmpty else { return [] }
        var sums: [String: [Double]] = [:], counts: [String: Int] = [:]
        for text in usable {
            let intent = text.intent ?? ""
            var sum = sums[intent] ?? [Double](repeating: 0, count: d)
            for index in 0..<d { sum[index] += Double(text.vector[index]) }
            sums[intent] = sum
            counts[intent, default: 0] += 1
        }
        let means = sums.mapValues { $0 }.reduce(into: [String: [Double]]()) { result, item in
            let n = Double(counts[item.key] ?? 1)
            result[item.key] = item.value.map { $0 / n }
        }
        var total = [Double](repeating: 0, count: d)
        for text in usable { for index in 0..<d { total[index] += Double(text.vector[index]) } }
        total = total.map { $0 / Double(usable.count) }
        var within = [Double](repeating: 0, count: d * d), between = within
        for text in usable {
            let centre = means[text.intent ?? ""] ?? total
            let x = (0..<d).map { Double(text.vector[$0]) - centre[$0] }
            for row in 0..<d where x[row] != 0 { for column in 0..<d { within[row * d + column] += x[row] * x[column] } }
        }
        for (intent, centre) in means.sorted(by: { $0.key < $1.key }) {
            let n = Double(counts[intent] ?? 0)
            let x = (0..<d).map { centre[$0] - total[$0] }
            for row in 0..<d { for column in 0..<d { between[row * d + column] += n * x[row] * x[column] } }
        }
        let n = Double(usable.count)
        within = within.map { $0 / n }
        between = between.map { $0 / n }
        let meanEigen = (0..<d).reduce(0) { $0 + within[$1 * d + $1] } / Double(d)
        for index in 0..<d { within[index * d + index] += ridge * meanEigen }
        // Whiten the within-intent scatter, then take the top directions of the between-intent scatter there.
        let (values, vectors) = symmetricEigen(within, size: d)
        var whitening = [Double](repeating: 0, count: d * d)  // columns: eigenvectors / sqrt(eigenvalue)
        for row in 0..<d { for column in 0..<d { whitening[row * d + column] = vectors[row * d + column] / max(values[column], 1e-12).squareRoot() } }
        // B' = Wᵀ B W
        var temporary = [Double](repeating: 0, count: d * d)
        for row in 0..<d { for k in 0..<d where between[row * d + k] != 0 { let b = between[row * d + k]; for column in 0..<d { temporary[row * d + column] += b * whitening[k * d + column] } } }
        var whitened = [Double](repeating: 0, count: d * d)
        for k in 0..<d { for row in 0..<d { let w = whitening[k * d + row]; if w == 0 { continue }; for column in 0..<d { whitened[row * d + column] += w * temporary[k * d + column] } } }
        let (betweenValues, betweenVectors) = symmetricEigen(whitened, size: d)
        let order = (0..<d).sorted { betweenValues[$0] > betweenValues[$1] }
        var projection: [Float] = []
        for component in order.prefix(min(rank, d)) {
            // The direction in the original space: W v.
            for row in 0..<d {
                var sum = 0.0
                for k in 0..<d { sum += whitening[row * d + k] * betweenVectors[k * d + component] }
                projection.append(Float(sum))
            }
        }
        return projection
    }

    /// Eigenvalues and eigenvectors (as columns, row-major) of a symmetric matrix, by cyclic Jacobi rotations.
    static func symmetricEigen(_ matrix: [Double], size n: Int) -> (values: [Double], vectors: [Double]) {
        var a = matrix
        var v = [Double](repeating: 0, count: n * n)
        for index in 0..<n { v[index * n + index] = 1 }
        for _ in 0..<30 {
            var off = 0.0
            for p in 0..<n { for q in (p + 1)..<max(p + 1, n) { off += a[p * n + q] * a[p * n + q] } }
            if off < 1e-22 { break }
            for p in 0..<n {
                for q in (p + 1)..<max(p + 1, n) {
                    let apq = a[p * n + q]
                    guard abs(apq) > 1e-30 else { continue }
                    let theta = (a[q * n + q] - a[p * n + p]) / (2 * apq)
                    let t = (theta >= 0 ? 1 : -1) / (abs(theta) + (theta * theta + 1).squareRoot())
                    let c = 1 / (t * t + 1).squareRoot(), s = t * c
                    for k in 0..<n {
                        let akp = a[k * n + p], akq = a[k * n + q]
                        a[k * n + p] = c * akp - s * akq
                        a[k * n + q] = s * akp + c * akq
                    }
                    for k in 0..<n {
                        let apk = a[p * n + k], aqk = a[q * n + k]
                        a[p * n + k] = c * apk - s * aqk
                        a[q * n + k] = s * apk + c * aqk
                    }
                    for k in 0..<n {
                        let vkp = v[k * n + p], vkq = v[k * n + q]
                        v[k * n + p] = c * vkp - s * vkq
                        v[k * n + q] = s * vkp + c * vkq
                    }
                }
            }
        }
        return ((0..<n).map { a[$0 * n + $0] }, v)
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
