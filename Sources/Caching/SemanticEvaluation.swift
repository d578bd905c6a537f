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
        /// What the pair verifier reads (nil: the verifier is not evaluated).
        public var pair: PairVerifier.PairText?

        public init(text: String, intent: String, idealHit: Bool, vector: [Float], pair: PairVerifier.PairText? = nil) {
            self.text = text
            self.intent = intent
            self.idealHit = idealHit
            self.vector = vector
            self.pair = pair
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

    /// How a replayed cache decides: candidates at cosine `minimumSimilarity` or more (best first, at most
    /// `candidates`), each passing the guard (when `guardChecks`) and then scoring at least the threshold — the
    /// verifier's probability, or the cosine without a verifier.
    public struct Policy: Sendable {
        public var minimumSimilarity: Double
        public var guardChecks: Bool
        public var verifier: PairVerifier?
        public var threshold: Double
        public var calibration: Calibration?
        public var candidates = 5
        /// With a verifier: a candidate the guard passes at this cosine or more is served whatever the verifier says
        /// (the rules' own serving, which the verifier then extends below it); nil: the verifier decides alone.
        public var rulesFloor: Double?
        /// With a verifier: a candidate the guard passes at `cosine` or more is served at the verifier's probability
        /// `probability` or more (two verdicts agreeing), below the threshold, while the calibration keeps the band
        /// open; nil: no such band.
        public var agreement: (cosine: Double, probability: Double)?

        public init(minimumSimilarity: Double, guardChecks: Bool, verifier: PairVerifier? = nil, threshold: Double,
                    calibration: Calibration? = nil) {
            self.minimumSimilarity = minimumSimilarity
            self.guardChecks = guardChecks
            self.verifier = verifier
            self.threshold = threshold
            self.calibration = calibration
        }

        /// A cosine threshold, with or without the guard.
        public static func plain(_ threshold: Double, guardChecks: Bool) -> Policy {
            Policy(minimumSimilarity: threshold, guardChecks: guardChecks, threshold: threshold)
        }
    }

    /// Online calibration as the gateway would run it: a share `shadowRate` of hits (shadow checks) and of near
    /// misses (the best candidate the threshold refused, compared with the model's answer) are labelled, and each
    /// label reaches the calibrator `delay` queries later: never for the query it labels, never before.
    public struct Calibration: Sendable {
        public var settings: ThresholdCalibrator.Settings
        public var shadowRate: Double
        public var seed: UInt64
        public var delay: Int

        public init(settings: ThresholdCalibrator.Settings, shadowRate: Double, seed: UInt64 = 15, delay: Int = 10) {
            self.settings = settings
            self.shadowRate = shadowRate
            self.seed = seed
            self.delay = max(1, delay)
        }

        /// Whether query `index` is sampled: a hash of the seed and the position, so runs repeat.
        func sampled(_ index: Int) -> Bool {
            var z = seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return Double(z >> 11) * 0x1p-53 < shadowRate
        }
    }

    /// One decision of a replay: the stored query served (its position in the stream), or nil for a miss.
    public struct Decision: Sendable, Hashable {
        public var served: Int?
        public var score: Double?
        public var threshold: Double
    }

    public struct Replay: Sendable {
        public var score: StreamScore
        /// Labels the calibration received.
        public var labels: Int
        public var decisions: [Decision]
    }

    /// Replays `queries` in order under `policy`.
    public static func replay(_ queries: [StreamQuery], policy: Policy, words: (any WordVectors)? = nil) -> Replay {
        var decisions: [Decision] = []
        decisions.reserveCapacity(queries.count)
        var score = StreamScore(threshold: policy.threshold, verified: policy.guardChecks || policy.verifier != nil)
        var stored: [Int] = []
        var calibrator = policy.calibration.map { calibration -> ThresholdCalibrator in
            var settings = calibration.settings
            settings.base = policy.threshold
            return ThresholdCalibrator(settings: settings)
        }
        var pending: [(due: Int, score: Double, correct: Bool)] = []
        var labels = 0
        for (position, query) in queries.enumerated() {
            // Labels produced by earlier queries whose checks have finished by now.
            if calibrator != nil, !pending.isEmpty {
                var remaining: [(due: Int, score: Double, correct: Bool)] = []
                for label in pending {
                    if label.due <= position {
                        calibrator?.record(similarity: label.score, correct: label.correct)
                        labels += 1
                    } else {
                        remaining.append(label)
                    }
                }
                pending = remaining
            }
            let threshold = calibrator?.threshold ?? policy.threshold
            score.queries += 1
            if query.idealHit { score.idealHits += 1 }
            var best: [(Float, Int)] = []
            for entry in stored {
                let similarity = InMemorySemanticCache.dot(query.vector, queries[entry].vector)
                guard Double(similarity) >= policy.minimumSimilarity else { continue }
                best.append((similarity, entry))
            }
            best.sort { $0.0 > $1.0 }
            var served: (entry: Int, score: Double)?
            var nearMiss: (entry: Int, score: Double)?
            for (similarity, entry) in best.prefix(policy.candidates) {
                if policy.guardChecks, SemanticGuard.check(query.text, against: queries[entry].text) != nil { continue }
                let value: Double
                if let verifier = policy.verifier, let words, let a = query.pair, let b = queries[entry].pair {
                    value = verifier.probability(query: a, candidate: b, words: words)
                } else {
                    value = Double(similarity)
                }
                if value >= threshold || policy.rulesFloor.map({ Double(similarity) >= $0 }) == true
                    || policy.agreement.map({ Double(similarity) >= $0.cosine && value >= $0.probability
                        && calibrator?.agreementOpen(from: $0.probability) != false }) == true
                {
                    served = (entry, value)
                    break
                }
                if nearMiss == nil { nearMiss = (entry, value) }
            }
            // As in the gateway, a namespace keeps observations once it has a label.
            if labels > 0, let observed = served?.score ?? nearMiss?.score { calibrator?.observe(similarity: observed) }
            let sampled = policy.calibration?.sampled(position) ?? false
            let delay = policy.calibration?.delay ?? 1
            if let served {
                score.hits += 1
                let correct = queries[served.entry].intent == query.intent
                if correct { score.correctHits += 1 }
                if query.idealHit { score.idealHitsServed += 1 }
                if sampled { pending.append((position + delay, served.score, correct)) }
            } else {
                stored.append(position)
                if sampled, let nearMiss {
                    pending.append((position + delay, nearMiss.score, queries[nearMiss.entry].intent == query.intent))
                }
            }
            decisions.append(Decision(served: served?.entry, score: served?.score ?? nearMiss?.score, threshold: threshold))
        }
        return Replay(score: score, labels: labels, decisions: decisions)
    }
}
