/// Measures a semantic cache on labelled data, to choose its threshold and report its false-hit rate.
public enum SemanticEvaluation {
    /// One labelled pair: whether the two questions may share an answer, and their cosine similarity.
    public struct Pair: Sendable {
        public var first: String
        public var second: String
        public var sameAnswer: Bool
        public var similarity: Float

        public init(first: String, second: String, sameAnswer: Bool, similarity: Float) {
            self.first = first
            self.second = second
            self.sameAnswer = sameAnswer
            self.similarity = similarity
        }
    }

    /// Pairs at one threshold: a pair is served when its similarity reaches the threshold (and, with verification,
    /// the guard lets it through).
    public struct PairScore: Sendable, Hashable {
        public var threshold: Double
        public var verified: Bool
        public var served = 0
        public var correct = 0
        public var positives = 0
        public var negatives = 0
        public var falseHits = 0

        /// Of the pairs served, the share that may share an answer.
        public var precision: Double { served == 0 ? 1 : Double(correct) / Double(served) }
        /// Of the pairs that may share an answer, the share served.
        public var recall: Double { positives == 0 ? 0 : Double(correct) / Double(positives) }
        /// Of the pairs that must not share an answer, the share served anyway.
        public var falseHitRate: Double { negatives == 0 ? 0 : Double(falseHits) / Double(negatives) }
    }

    public static func score(_ pairs: [Pair], threshold: Double, verified: Bool) -> PairScore {
        var score = PairScore(threshold: threshold, verified: verified)
        for pair in pairs {
            if pair.sameAnswer { score.positives += 1 } else { score.negatives += 1 }
            guard Double(pair.similarity) >= threshold else { continue }
            if verified, SemanticGuard.check(pair.first, against: pair.second) != nil { continue }
            score.served += 1
            if pair.sameAnswer { score.correct += 1 } else { score.falseHits += 1 }
        }
        return score
    }

    /// One query of a replayed stream.
    public struct StreamQuery: Sendable {
        public var text: String
        public var intent: String
        /// Whether an earlier query had the same intent (a perfect cache would hit).
        public var idealHit: Bool
        public var vector: [Float]

        public init(text: String, intent: String, idealHit: Bool, vector: [Float]) {
            self.text = text
            self.intent = intent
            self.idealHit = idealHit
            self.vector = vector
        }
    }

    public struct StreamScore: Sendable, Hashable {
        public var threshold: Double
        public var verified: Bool
        public var queries = 0
        public var hits = 0
        public var correctHits = 0
        public var idealHits = 0
        /// Hits on queries that should hit (an earlier query had the intent), whatever was served.
        public var idealHitsServed = 0

        public var hitRate: Double { queries == 0 ? 0 : Double(hits) / Double(queries) }
        /// Of the hits, the share that served an answer of the right intent.
        public var hitPrecision: Double { hits == 0 ? 1 : Double(correctHits) / Double(hits) }
        /// Of the queries a perfect cache would answer, the share answered correctly.
        public var recall: Double { idealHits == 0 ? 0 : Double(correctHits) / Double(idealHits) }
        public var falseHitRate: Double { queries == 0 ? 0 : Double(hits - correctHits) / Double(queries) }
    }

    /// Replays `queries` in order through an empty cache: the best stored question at or above the threshold that
    /// passes verification is a hit (correct when its intent is the query's); a miss stores the query.
    public static func replay(_ queries: [StreamQuery], threshold: Double, verified: Bool, candidates: Int = 5) -> StreamScore {
        var score = StreamScore(threshold: threshold, verified: verified)
        var stored: [(vector: [Float], text: String, intent: String)] = []
        for query in queries {
            score.queries += 1
            if query.idealHit { score.idealHits += 1 }
            var best: [(Float, Int)] = []
            for (index, entry) in stored.enumerated() {
                let similarity = InMemorySemanticCache.dot(query.vector, entry.vector)
                guard Double(similarity) >= threshold else { continue }
                best.append((similarity, index))
            }
            best.sort { $0.0 > $1.0 }
            var served: Int?
            for (_, index) in best.prefix(candidates) {
                if verified, SemanticGuard.check(query.text, against: stored[index].text) != nil { continue }
                served = index
                break
            }
            if let served {
                score.hits += 1
                if stored[served].intent == query.intent { score.correctHits += 1 }
                if query.idealHit { score.idealHitsServed += 1 }
            } else {
                stored.append((query.vector, query.text, query.intent))
            }
        }
        return score
    }
}
