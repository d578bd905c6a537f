#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
public import SwitchyardModels
public import SwitchyardCore

/// The on-device complexity classifier: from a prompt's MiniLM embedding and its text features, how much more likely
/// the strong model is to answer it correctly than the weak one (`p_strong − p_weak`, in −1…1). Two logistic
/// regressions over the standardised features, one per model's correctness; a route's thresholds compare against
/// the score's percentile among the training prompts, so a threshold reads as "the share of traffic sent up".
public struct ComplexityClassifier: Sendable, Hashable {
    public static let formatName = "switchyard-complexity-classifier"
    public static let formatVersion = 1
    public static let embeddingModel = "all-MiniLM-L6-v2"
    public static let embeddingDimension = 384

    /// Per input (the embedding, then `PromptFeatures.names`): subtracted, then divided by.
    public var mean: [Double]
    public var scale: [Double]
    public var strong: LogisticRegression
    public var weak: LogisticRegression
    /// The training prompts' scores at percentiles 0, 1, …, 100.
    public var quantiles: [Double]
    /// The cascade's scorer of cheap answers (trained on the examples that carry one; GSM8K).
    public var answerScorer: AnswerScorer?
    public var training: Training

    public struct Training: Sendable, Hashable {
        /// SHA-256 of the training prompts and labels, in order.
        public var dataSHA256: String
        public var examples: Int
        public var settings: LogisticRegression.Settings
    }

    var inputCount: Int { Self.embeddingDimension + PromptFeatures.names.count }

    // MARK: Scoring

    /// The score, or nil when the embedding is not a MiniLM vector.
    /// - Parameters: `turns` and `tools` as `PromptFeatures.compute` takes them.
    public func score(embedding: [Float], text: String, turns: Int = 1, tools: Int = 0) -> Double? {
        guard embedding.count == Self.embeddingDimension else { return nil }
        return score(inputs: Self.inputs(embedding: embedding, text: text, turns: turns, tools: tools))
    }

    func score(inputs: [Double]) -> Double {
        var standardised = inputs
        for index in standardised.indices { standardised[index] = (inputs[index] - mean[index]) / scale[index] }
        return strong.probability(standardised) - weak.probability(standardised)
    }

    /// The share of training prompts that scored below `score`: 0.8 means "harder than 80% of them".
    public func percentile(of score: Double) -> Double {
        var low = 0, high = quantiles.count
        while low < high {
            let middle = (low + high) / 2
            if quantiles[middle] < score { low = middle + 1 } else { high = middle }
        }
        return Double(low) / Double(max(quantiles.count - 1, 1))
    }

    static func inputs(embedding: [Float], text: String, turns: Int = 1, tools: Int = 0) -> [Double] {
        var inputs = embedding.map(Double.init)
        inputs.append(contentsOf: PromptFeatures.compute(text, turns: turns, tools: tools).map(Double.init))
        return inputs
    }

    // MARK: Training

    /// Fits both heads on `examples` (each with its prompt's embedding).
    public static func train(_ examples: [RoutingExample], embeddings: [[Float]],
                             settings: LogisticRegression.Settings = LogisticRegression.Settings()) -> ComplexityClassifier {
        let rows = zip(examples, embeddings).map { inputs(embedding: $1, text: $0.prompt) }
        let dimension = embeddingDimension + PromptFeatures.names.count
        // A constant input (a feature the training text never varies) keeps scale 1 instead of dividing by zero.
        let (mean, scale) = Standardisation.fit(rows)
        let standardised = rows.map { row in (0..<dimension).map { (row[$0] - mean[$0]) / scale[$0] } }
        let strong = LogisticRegression.fit(rows: standardised, labels: examples.map { $0.strongCorrect ? 1 : 0 }, settings: settings)
        let weak = LogisticRegression.fit(rows: standardised, labels: examples.map { $0.weakCorrect ? 1 : 0 }, settings: settings)
        var classifier = ComplexityClassifier(mean: mean, scale: scale, strong: strong, weak: weak, quantiles: [],
                                              answerScorer: AnswerScorer.train(examples, settings: settings),
                                              training: Training(dataSHA256: dataHash(examples), examples: examples.count,
                                                                 settings: settings))
        let scores = rows.map { classifier.score(inputs: $0) }.sorted()
        classifier.quantiles = (0...100).map { scores.isEmpty ? 0 : scores[min(scores.count - 1, $0 * (scores.count - 1) / 100)] }
        return classifier
    }

    /// The largest absolute difference between any number of the two classifiers (as their files hold them).
    public func largestDifference(from other: ComplexityClassifier) -> Double {
        func largest(_ a: [Double], _ b: [Double]) -> Double {
            a.count == b.count ? zip(a, b).map { abs(Self.rounded($0) - Self.rounded($1)) }.max() ?? 0 : .infinity
        }
        return [largest(mean, other.mean), largest(scale, other.scale), largest(strong.weights, other.strong.weights),
                largest(weak.weights, other.weak.weights), largest([strong.bias, weak.bias], [other.strong.bias, other.weak.bias]),
                largest(quantiles, other.quantiles),
                largest(answerScorer.map { $0.head.weights + [$0.head.bias] + $0.mean + $0.scale } ?? [],
                        other.answerScorer.map { $0.head.weights + [$0.head.bias] + $0.mean + $0.scale } ?? [])].max() ?? 0
    }

    static func dataHash(_ examples: [RoutingExample]) -> String {
        var bytes: [UInt8] = []
        for example in examples {
            bytes.append(contentsOf: example.prompt.utf8)
            bytes.append(0)
            bytes.append(example.weakCorrect ? 1 : 0)
            bytes.append(example.strongCorrect ? 1 : 0)
        }
        return KeyHash.sha256Hex(bytes: bytes)
    }
}

/// A problem with a classifier file, said so that the operator knows what to do.
public struct ClassifierFileError: Error, CustomStringConvertible, Hashable {
    public var description: String
}

extension ComplexityClassifier {
    // MARK: File

    /// The file's JSON text: members in key order, numbers as their shortest round-tripping text, so the same
    /// weights always give the same bytes.
    public func fileText() -> String {
        func numbers(_ values: [Double]) -> JSONValue { .array(values.map { .double(Self.rounded($0)) }) }
        func head(_ model: LogisticRegression) -> JSONValue {
            ["weights": numbers(model.weights), "bias": .double(Self.rounded(model.bias))]
        }
        let value: JSONValue = [
            "format": .string(Self.formatName), "version": .int(Int64(Self.formatVersion)),
            "embedding": ["model": .string(Self.embeddingModel), "dimension": .int(Int64(Self.embeddingDimension))],
            "text_features": .array(PromptFeatures.names.map { .string($0) }),
            "score": "p_strong - p_weak",
            "mean": numbers(mean), "scale": numbers(scale),
            "heads": ["strong": head(strong), "weak": head(weak)],
            "quantiles": numbers(quantiles),
            "answer_scorer": answerScorer.map { scorer in
                ["features": .array(AnswerScorer.featureNames.map { .string($0) }), "mean": numbers(scorer.mean),
                 "scale": numbers(scorer.scale), "weights": numbers(scorer.head.weights), "bias": .double(Self.rounded(scorer.head.bias))]
            } ?? .null,
            "training": [
                "data_sha256": .string(training.dataSHA256), "examples": .int(Int64(training.examples)),
                "l2": .double(training.settings.l2), "iterations": .int(Int64(training.settings.iterations)),
                "learning_rate": .double(training.settings.learningRate),
            ],
        ]
        var bytes: [UInt8] = []
        value.write(into: &bytes, sortedKeys: true)
        return String(decoding: bytes, as: UTF8.self) + "\n"
    }

    /// Seven significant digits: what a `Float` holds, and what the file needs.
    static func rounded(_ value: Double) -> Double {
        Double(String(Float(value))) ?? value
    }

    public static func load(path: String) throws(ClassifierFileError) -> ComplexityClassifier {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ClassifierFileError(description: "cannot read the classifier file '\(path)'")
        }
        do {
            return try ComplexityClassifier(json: try JSONValue.parse(Array(data)))
        } catch let error as ClassifierFileError {
            throw ClassifierFileError(description: "\(path): \(error.description)")
        } catch {
            throw ClassifierFileError(description: "\(path): not JSON (\(error))")
        }
    }

    public init(json: JSONValue) throws(ClassifierFileError) {
        guard json["format"]?.stringValue == Self.formatName else {
            throw ClassifierFileError(description: "not a \(Self.formatName) file")
        }
        guard json["version"]?.intValue == Int64(Self.formatVersion) else {
            throw ClassifierFileError(description: "version \(json["version"]?.intValue.map(String.init) ?? "?") is not \(Self.formatVersion); "
                                      + "retrain it with `switchyard train-router`")
        }
        guard json["embedding"]?["model"]?.stringValue == Self.embeddingModel,
              json["embedding"]?["dimension"]?.intValue == Int64(Self.embeddingDimension) else {
            throw ClassifierFileError(description: "trained on another embedding than \(Self.embeddingModel) (\(Self.embeddingDimension))")
        }
        guard json["text_features"]?.arrayValue?.compactMap(\.stringValue) == PromptFeatures.names else {
            throw ClassifierFileError(description: "its text features are not \(PromptFeatures.names.joined(separator: ", "))")
        }
        let count = Self.embeddingDimension + PromptFeatures.names.count
        func numbers(_ value: JSONValue?, _ name: String, count: Int) throws(ClassifierFileError) -> [Double] {
            guard let values = value?.arrayValue?.compactMap(\.doubleValue), values.count == count, values.allSatisfy(\.isFinite) else {
                throw ClassifierFileError(description: "'\(name)' must be \(count) finite numbers")
            }
            return values
        }
        func head(_ name: String) throws(ClassifierFileError) -> LogisticRegression {
            let weights = try numbers(json["heads"]?[name]?["weights"], "heads.\(name).weights", count: count)
            guard let bias = json["heads"]?[name]?["bias"]?.doubleValue, bias.isFinite else {
                throw ClassifierFileError(description: "'heads.\(name).bias' must be a finite number")
            }
            return LogisticRegression(weights: weights, bias: bias)
        }
        mean = try numbers(json["mean"], "mean", count: count)
        scale = try numbers(json["scale"], "scale", count: count)
        guard scale.allSatisfy({ $0 > 0 }) else { throw ClassifierFileError(description: "'scale' must be positive") }
        strong = try head("strong")
        weak = try head("weak")
        quantiles = try numbers(json["quantiles"], "quantiles", count: 101)
        guard zip(quantiles, quantiles.dropFirst()).allSatisfy({ $0 <= $1 }) else {
            throw ClassifierFileError(description: "'quantiles' must not decrease")
        }
        if let scorer = json["answer_scorer"], scorer != .null {
            guard scorer["features"]?.arrayValue?.compactMap(\.stringValue) == AnswerScorer.featureNames else {
                throw ClassifierFileError(description: "its answer scorer's features are not \(AnswerScorer.featureNames.joined(separator: ", "))")
            }
            let width = AnswerScorer.featureNames.count
            let scale = try numbers(scorer["scale"], "answer_scorer.scale", count: width)
            guard scale.allSatisfy({ $0 > 0 }), let bias = scorer["bias"]?.doubleValue, bias.isFinite else {
                throw ClassifierFileError(description: "'answer_scorer' needs a positive scale and a finite bias")
            }
            answerScorer = AnswerScorer(mean: try numbers(scorer["mean"], "answer_scorer.mean", count: width), scale: scale,
                                        head: LogisticRegression(weights: try numbers(scorer["weights"], "answer_scorer.weights", count: width),
                                                                 bias: bias))
        } else {
            answerScorer = nil
        }
        let info = json["training"]
        training = Training(dataSHA256: info?["data_sha256"]?.stringValue ?? "", examples: Int(clamping: info?["examples"]?.intValue ?? 0),
                            settings: LogisticRegression.Settings(l2: info?["l2"]?.doubleValue ?? 0,
                                                                  iterations: Int(clamping: info?["iterations"]?.intValue ?? 0),
                                                                  learningRate: info?["learning_rate"]?.doubleValue ?? 0))
    }
}
