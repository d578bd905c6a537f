#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
public import SwitchyardCore
public import SwitchyardModels

/// Input (context-free) vectors of single words: what the verifier compares a substituted word with.
public protocol WordVectors: Sendable {
    /// The L2-normalised vector of `word`, `dimension` long.
    func vector(ofWord word: String) -> [Float]
}

/// The learned half of semantic-cache verification: the probability that a stored question's answer also answers
/// the query, from the two sentence embeddings and the words that differ.
///
/// `SemanticGuard` stays in front of it for what rules decide exactly (negation, numbers, names, swapped roles).
/// What a list of words cannot cover — "debit card" against "credit card", "daily" against "weekly", "enable"
/// against "disable", one intent against a neighbouring one — this model learns from labelled pairs: a logistic
/// regression over
/// - the cosine and its excess over 0.85 and 0.93 (right and wrong hits overlap in cosine; the rest says which);
/// - word overlap: Jaccard of the content words, how many each text has that the other lacks, whether exactly one
///   word was replaced by one other;
/// - the product and the absolute difference of the two sentence embeddings, per dimension (which directions of
///   meaning the two texts differ in, not only how much);
/// - for a small edit (one or two words replaced, the rest kept), the absolute difference of the input vectors of
///   the replaced words (out of their sentence, where "debit" and "credit" are far apart even when the sentences
///   are not), and their cosine.
/// A value type: the file's numbers, nothing else.
public struct PairVerifier: Sendable, Hashable {
    public static let formatName = "switchyard-pair-verifier"
    public static let formatVersion = 1
    public static let embeddingModel = "all-MiniLM-L6-v2"
    public static let dimension = 384
    public static let scalarFeatureNames = ["cosine", "cosine_over_0.85", "cosine_over_0.93", "jaccard", "only_in_query",
                                            "only_in_candidate", "one_substitution", "same_words", "small_edit_words_cosine",
                                            "small_edit", "discriminant_cosine", "discriminant_cosine_over_0.5"]
    public static var featureCount: Int { scalarFeatureNames.count + 3 * dimension }

    /// Per feature: subtracted, then divided by.
    public var mean: [Double]
    public var scale: [Double]
    public var model: LogisticRegression
    /// For small edits only (one or two words replaced, the rest kept): the probability that the replacement keeps
    /// the meaning. Trained on small edits alone, so that what decides a replaced word ("debit" → "credit") does not
    /// bend the main model, whose other pairs are rephrasings.
    public var edit: LogisticRegression
    /// Discriminant directions (`rank` rows of `dimension`, row-major): a linear map of the embedding under which
    /// questions of one intent lie close and those of neighbouring intents apart (LDA on the training intents). The
    /// cosine of the two projected vectors is a feature.
    public var projection: [Float]
    /// The probability served before any label (chosen at training for the training-data precision target).
    public var threshold: Double
    /// Candidates less cosine-similar than this are not considered.
    public var minimumSimilarity: Double
    public var training: [String: JSONValue]

    public init(mean: [Double], scale: [Double], model: LogisticRegression, edit: LogisticRegression? = nil,
                projection: [Float] = [], threshold: Double, minimumSimilarity: Double, training: [String: JSONValue] = [:]) {
        self.projection = projection.count % Self.dimension == 0 ? projection : []
        self.mean = mean
        self.scale = scale
        self.model = model
        self.edit = edit ?? LogisticRegression(weights: [Double](repeating: 0, count: model.weights.count), bias: 20)
        self.threshold = threshold
        self.minimumSimilarity = minimumSimilarity
        self.training = training
    }

    // MARK: Scoring

    /// The probability that `candidate`'s answer answers `query`; 0 for vectors of the wrong size.
    public func probability(query: PairText, candidate: PairText, words: any WordVectors) -> Double {
        guard query.vector.count == Self.dimension, candidate.vector.count == Self.dimension else { return 0 }
        return probability(features: Self.features(query, candidate, words: words, projection: projection))
    }

    /// `pair` with its projected vector computed once (a query judged against several candidates).
    public func prepared(_ pair: PairText) -> PairText {
        var pair = pair
        pair.projected = Self.project(pair.vector, projection)
        return pair
    }

    /// The normalised image of `vector` under `projection` (empty for no projection).
    public static func project(_ vector: [Float], _ projection: [Float]) -> [Float] {
        let rank = projection.count / dimension
        guard rank > 0, vector.count == dimension else { return [] }
        var result = [Float](repeating: 0, count: rank)
        // Sixteen lanes at a time (the dimension is a multiple of 16): a lookup projects up to six vectors.
        projection.withUnsafeBytes { rows in
            vector.withUnsafeBytes { x in
                guard let rows = rows.baseAddress, let x = x.baseAddress else { return }
                for row in 0..<rank {
                    var sum = SIMD16<Float>(repeating: 0)
                    let base = row * dimension * 4
                    for offset in stride(from: 0, to: dimension * 4, by: 64) {
                        sum += rows.loadUnaligned(fromByteOffset: base + offset, as: SIMD16<Float>.self)
                            * x.loadUnaligned(fromByteOffset: offset, as: SIMD16<Float>.self)
                    }
                    result[row] = sum.sum()
                }
            }
        }
        let norm = result.reduce(0) { $0 + $1 * $1 }.squareRoot()
        return norm > 0 ? result.map { $0 / norm } : result
    }

    /// The main model's probability, times the edit head's for a small edit.
    public func probability(features: [Double]) -> Double {
        let main = Self.probability(model, features, mean: mean, scale: scale)
        guard Self.isSmallEdit(features) else { return main }
        return main * Self.probability(edit, features, mean: mean, scale: scale)
    }

    /// Whether the features are of a small edit (what `edit` judges).
    public static func isSmallEdit(_ features: [Double]) -> Bool {
        features.count > 9 && features[9] != 0
    }

    static func probability(_ model: LogisticRegression, _ features: [Double], mean: [Double], scale: [Double]) -> Double {
        var logit = model.bias
        features.withUnsafeBufferPointer { values in
            mean.withUnsafeBufferPointer { mean in
                scale.withUnsafeBufferPointer { scale in
                    model.weights.withUnsafeBufferPointer { weights in
                        for index in 0..<min(values.count, weights.count, mean.count, scale.count) {
                            logit += (values[index] - mean[index]) / scale[index] * weights[index]
                        }
                    }
                }
            }
        }
        return 1 / (1 + exp(-logit))
    }

    /// One side of a pair: its text's content words and its sentence embedding, made once per text (the query's
    /// once per lookup, not once per candidate).
    public struct PairText: Sendable {
        public var vector: [Float]
        public var words: [String]
        let wordSet: Set<String>
        /// The vector under the verifier's projection, when computed ahead (`prepared`).
        var projected: [Float]?

        public init(text: String, vector: [Float]) {
            self.vector = vector
            var seen: Set<String> = []
            var words: [String] = []
            for token in SemanticGuard.tokens(text) where !token.text.isEmpty {
                let word = token.text.lowercased()
                guard !PairVerifier.functionWords.contains(word), seen.insert(word).inserted else { continue }
                words.append(word)
                // Bounded: what a question says is in its first words.
                if words.count >= PairVerifier.maximumWords { break }
            }
            self.words = words
            wordSet = seen
        }
    }

    static let maximumWords = 64

    /// Words whose presence or absence does not change what is asked (the guard handles negations and relation
    /// words on its own).
    static let functionWords: Set<String> = [
        "a", "an", "the", "i", "me", "my", "mine", "we", "us", "our", "you", "your", "it", "its", "this", "that", "these",
        "those", "is", "are", "am", "was", "were", "be", "been", "do", "does", "did", "can", "could", "will", "would",
        "should", "shall", "may", "might", "must", "have", "has", "had", "to", "of", "in", "on", "at", "by", "with",
        "and", "or", "so", "if", "as", "please", "there", "here", "what", "how", "why", "when", "where", "which", "who",
        "just", "any", "some", "get", "got", "im", "i'm", "i've", "i'd", "it's", "there's", "what's", "how's", "about",
        "up", "out", "also", "still", "yet", "now", "then", "ok", "okay", "hi", "hello", "thanks", "thank",
    ]

    /// The features of a pair, in the order of `scalarFeatureNames`, then product, difference and changed words.
    public static func features(_ a: PairText, _ b: PairText, words: any WordVectors, projection: [Float]) -> [Double] {
        var features = [Double](repeating: 0, count: featureCount)
        var cosine: Float = 0
        for index in 0..<dimension { cosine += a.vector[index] * b.vector[index] }
        let only = (a.words.filter { !b.wordSet.contains($0) }, b.words.filter { !a.wordSet.contains($0) })
        let shared = a.words.count - only.0.count
        let union = a.words.count + only.1.count
        // The changed words' vectors only for a small edit (a word or two replaced, the rest kept): there they say
        // what was replaced; in a rephrasing, where most words change, they say nothing a sentence embedding does not.
        let smallEdit = !only.0.isEmpty && !only.1.isEmpty && only.0.count <= 2 && only.1.count <= 2 && shared >= 1
        let changedA = smallEdit ? mean(only.0.map(words.vector(ofWord:))) : nil
        let changedB = smallEdit ? mean(only.1.map(words.vector(ofWord:))) : nil
        var changedCosine: Float = 0
        if let changedA, let changedB { for index in 0..<dimension { changedCosine += changedA[index] * changedB[index] } }
        let c = Double(cosine)
        features[0] = c
        features[1] = max(0, c - 0.85) * 10
        features[2] = max(0, c - 0.93) * 10
        features[3] = union == 0 ? 1 : Double(shared) / Double(union)
        features[4] = Double(min(only.0.count, 5)) / 5
        features[5] = Double(min(only.1.count, 5)) / 5
        features[6] = only.0.count == 1 && only.1.count == 1 ? 1 : 0
        features[7] = only.0.isEmpty && only.1.isEmpty ? 1 : 0
        features[8] = Double(changedCosine)
        features[9] = changedA != nil && changedB != nil ? 1 : 0
        let pa = a.projected ?? project(a.vector, projection), pb = b.projected ?? project(b.vector, projection)
        if !pa.isEmpty, pa.count == pb.count {
            var projected: Float = 0
            for index in pa.indices { projected += pa[index] * pb[index] }
            features[10] = Double(projected)
            features[11] = max(0, Double(projected) - 0.5) * 2
        }
        let base = scalarFeatureNames.count
        for index in 0..<dimension {
            features[base + index] = Double(a.vector[index] * b.vector[index]) * Double(dimension)
            features[base + dimension + index] = Double(abs(a.vector[index] - b.vector[index])) * Double(dimension).squareRoot()
            if let changedA, let changedB {
                features[base + 2 * dimension + index] = Double(abs(changedA[index] - changedB[index]))
            }
        }
        return features
    }

    /// The normalised mean of `vectors`, or nil for none.
    static func mean(_ vectors: [[Float]]) -> [Float]? {
        guard let first = vectors.first, first.count == dimension else { return nil }
        var sum = [Float](repeating: 0, count: dimension)
        for vector in vectors where vector.count == dimension { for index in 0..<dimension { sum[index] += vector[index] } }
        var norm: Float = 0
        for value in sum { norm += value * value }
        guard norm > 0 else { return nil }
        let scale = 1 / norm.squareRoot()
        return sum.map { $0 * scale }
    }

    /// How the gateway and the evaluation calibrate the served probability: fine steps near 1, where it lives.
    public static func calibrationSettings(base: Double, targetPrecision: Double) -> ThresholdCalibrator.Settings {
        ThresholdCalibrator.Settings(base: base, floor: 0.5, ceiling: 0.9999, step: 0.001, targetPrecision: targetPrecision,
                                     modelled: true)
    }

    // MARK: File

    /// The file's JSON text: members in key order, numbers at `Float` precision, so the same weights give the same
    /// bytes.
    public func fileText() -> String {
        func numbers(_ values: [Double]) -> JSONValue { .array(values.map { .double(Self.rounded($0)) }) }
        let value: JSONValue = [
            "format": .string(Self.formatName), "version": .int(Int64(Self.formatVersion)),
            "embedding": ["model": .string(Self.embeddingModel), "dimension": .int(Int64(Self.dimension))],
            "scalar_features": .array(Self.scalarFeatureNames.map { .string($0) }),
            "mean": numbers(mean), "scale": numbers(scale), "weights": numbers(model.weights),
            "bias": .double(Self.rounded(model.bias)),
            "edit": ["weights": numbers(edit.weights), "bias": .double(Self.rounded(edit.bias))],
            "projection": ["rank": .int(Int64(projection.count / Self.dimension)),
                           "rows": numbers(projection.map(Double.init))],
            "threshold": .double(Self.rounded(threshold)), "minimum_similarity": .double(Self.rounded(minimumSimilarity)),
            "training": .object(training),
        ]
        var bytes: [UInt8] = []
        value.write(into: &bytes, sortedKeys: true)
        return String(decoding: bytes, as: UTF8.self) + "\n"
    }

    /// The largest absolute difference between any number of the two verifiers (as their files hold them).
    public func largestDifference(from other: PairVerifier) -> Double {
        let mine = mean + scale + model.weights + edit.weights + projection.map(Double.init)
            + [model.bias, edit.bias, threshold, minimumSimilarity]
        let theirs = other.mean + other.scale + other.model.weights + other.edit.weights + other.projection.map(Double.init)
            + [other.model.bias, other.edit.bias, other.threshold, other.minimumSimilarity]
        guard mine.count == theirs.count else { return .infinity }
        return zip(mine, theirs).map { abs(Self.rounded($0) - Self.rounded($1)) }.max() ?? 0
    }

    static func rounded(_ value: Double) -> Double {
        Double(String(Float(value))) ?? value
    }

    /// The verifier shipped with the gateway (`Sources/Caching/pair-verifier-v1.json`, trained by
    /// `switchyard train-verifier` on ../shared/data/cache's training splits).
    public static func bundled() throws(VerifierFileError) -> PairVerifier {
        guard let url = Bundle.module.url(forResource: "pair-verifier-v1", withExtension: "json") else {
            throw VerifierFileError(description: "the bundled verifier file is missing from this build")
        }
        return try load(path: url.path)
    }

    public static func load(path: String) throws(VerifierFileError) -> PairVerifier {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw VerifierFileError(description: "cannot read the verifier file '\(path)'")
        }
        do {
            return try PairVerifier(json: try JSONValue.parse(Array(data)))
        } catch let error as VerifierFileError {
            throw VerifierFileError(description: "\(path): \(error.description)")
        } catch {
            throw VerifierFileError(description: "\(path): not JSON (\(error))")
        }
    }

    public init(json: JSONValue) throws(VerifierFileError) {
        guard json["format"]?.stringValue == Self.formatName else {
            throw VerifierFileError(description: "not a \(Self.formatName) file")
        }
        guard json["version"]?.intValue == Int64(Self.formatVersion) else {
            throw VerifierFileError(description: "version \(json["version"]?.intValue.map(String.init) ?? "?") is not "
                                    + "\(Self.formatVersion); retrain it with `switchyard train-verifier`")
        }
        guard json["embedding"]?["model"]?.stringValue == Self.embeddingModel,
              json["embedding"]?["dimension"]?.intValue == Int64(Self.dimension) else {
            throw VerifierFileError(description: "trained on another embedding than \(Self.embeddingModel) (\(Self.dimension))")
        }
        guard json["scalar_features"]?.arrayValue?.compactMap(\.stringValue) == Self.scalarFeatureNames else {
            throw VerifierFileError(description: "its features are not \(Self.scalarFeatureNames.joined(separator: ", ")), …")
        }
        func numbers(_ name: String) throws(VerifierFileError) -> [Double] {
            guard let values = json[name]?.arrayValue?.compactMap(\.doubleValue), values.count == Self.featureCount,
                  values.allSatisfy(\.isFinite) else {
                throw VerifierFileError(description: "'\(name)' must be \(Self.featureCount) finite numbers")
            }
            return values
        }
        func number(_ name: String, in range: ClosedRange<Double>) throws(VerifierFileError) -> Double {
            guard let value = json[name]?.doubleValue, range.contains(value) else {
                throw VerifierFileError(description: "'\(name)' must be a number in \(range.lowerBound)…\(range.upperBound)")
            }
            return value
        }
        mean = try numbers("mean")
        scale = try numbers("scale")
        guard scale.allSatisfy({ $0 > 0 }) else { throw VerifierFileError(description: "'scale' must be positive") }
        model = LogisticRegression(weights: try numbers("weights"), bias: try number("bias", in: -1e6...1e6))
        guard let editWeights = json["edit"]?["weights"]?.arrayValue?.compactMap(\.doubleValue), editWeights.count == Self.featureCount,
              editWeights.allSatisfy(\.isFinite), let editBias = json["edit"]?["bias"]?.doubleValue, abs(editBias) <= 1e6 else {
            throw VerifierFileError(description: "'edit' must hold \(Self.featureCount) finite weights and a bias")
        }
        edit = LogisticRegression(weights: editWeights, bias: editBias)
        guard let rank = json["projection"]?["rank"]?.intValue, (0...Int64(Self.dimension)).contains(rank),
              let rows = json["projection"]?["rows"]?.arrayValue?.compactMap(\.doubleValue), rows.count == Int(rank) * Self.dimension,
              rows.allSatisfy(\.isFinite) else {
            throw VerifierFileError(description: "'projection' must hold a rank (0…\(Self.dimension)) and rank × \(Self.dimension) finite numbers")
        }
        projection = rows.map(Float.init)
        threshold = try number("threshold", in: 0...1)
        minimumSimilarity = try number("minimum_similarity", in: -1...1)
        guard case .object(let training)? = json["training"] else {
            throw VerifierFileError(description: "'training' must be an object")
        }
        self.training = training
    }
}

/// A problem with a verifier file, said so that the operator knows what to do.
public struct VerifierFileError: Error, CustomStringConvertible, Hashable {
    public var description: String
}
