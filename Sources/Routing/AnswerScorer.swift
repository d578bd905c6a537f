#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
public import SwitchyardCore
public import SwitchyardModels

/// The cascade's on-device answer scorer (FrugalGPT-style): from the question and the cheap model's answer, the
/// chance that the answer is right. A logistic head over text features of both; it reads no embedding, so a
/// cascade adds no second embedding to the request.
public struct AnswerScorer: Sendable, Hashable {
    public static let featureNames = [
        "log_answer_bytes", "log_answer_numbers", "answer_lines", "log_hedges", "final_number_is_integer",
        "log_final_number_repeats", "final_number_has_decimals", "log_length_ratio", "ends_with_final_number",
    ]

    public var mean: [Double]
    public var scale: [Double]
    public var head: LogisticRegression

    public init(mean: [Double], scale: [Double], head: LogisticRegression) {
        self.mean = mean
        self.scale = scale
        self.head = head
    }

    /// The chance the answer is right.
    public func confidence(question: String, answer: String) -> Double {
        let raw = Self.features(question: question, answer: answer)
        return head.probability(raw.indices.map { (raw[$0] - mean[$0]) / scale[$0] })
    }

    public static func features(question: String, answer: String) -> [Double] {
        let bytes = Array(answer.utf8)
        var numbers: [Range<Int>] = []
        var index = 0
        while index < bytes.count {
            let isDigit = bytes[index] >= 0x30 && bytes[index] <= 0x39
            guard isDigit else { index += 1; continue }
            var end = index
            while end < bytes.count, (bytes[end] >= 0x30 && bytes[end] <= 0x39) || bytes[end] == UInt8(ascii: ",")
                || (bytes[end] == UInt8(ascii: ".") && end + 1 < bytes.count && bytes[end + 1] >= 0x30 && bytes[end + 1] <= 0x39) {
                end += 1
            }
            while end > index, bytes[end - 1] == UInt8(ascii: ",") { end -= 1 }
            numbers.append(index..<end)
            index = max(end, index + 1)
        }
        let final = numbers.last.map { Array(bytes[$0]) }
        var repeats = 0
        if let final, !final.isEmpty {
            var start = 0
            while start + final.count <= bytes.count {
                if bytes[start..<(start + final.count)].elementsEqual(final) { repeats += 1; start += final.count } else { start += 1 }
            }
        }
        let lowered = answer.lowercased()
        var hedges = 0
        for word in lowered.split(whereSeparator: { !$0.isLetter && $0 != "'" }) where Self.hedgeWords.contains(String(word)) {
            hedges += 1
        }
        let lines = bytes.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }
        let isInteger = final.map { !$0.contains(UInt8(ascii: ".")) } ?? false
        let hasDecimals = final.map { $0.contains(UInt8(ascii: ".")) } ?? false
        let endsWithFinal = numbers.last.map { bytes.count - $0.upperBound <= 40 } ?? false
        return [
            log1p(Double(bytes.count)), log1p(Double(numbers.count)), Double(min(lines, 1000)), log1p(Double(hedges)),
            isInteger ? 1 : 0, log1p(Double(repeats)), hasDecimals ? 1 : 0,
            log1p(Double(bytes.count)) - log1p(Double(question.utf8.count)), endsWithFinal ? 1 : 0,
        ]
    }

    static let hedgeWords: Set<String> = ["however", "but", "approximately", "assume", "assuming", "cannot", "can't", "not",
                                          "round", "actually", "wait", "mistake", "incorrect", "unclear", "maybe", "perhaps"]

    /// Fits the scorer on examples that carry the cheap model's answer.
    public static func train(_ examples: [RoutingExample], settings: LogisticRegression.Settings) -> AnswerScorer? {
        let usable = examples.filter { $0.weakResponse != nil }
        guard !usable.isEmpty else { return nil }
        let rows = usable.map { features(question: $0.prompt, answer: $0.weakResponse ?? "") }
        let (mean, scale) = Standardisation.fit(rows)
        let standardised = rows.map { row in row.indices.map { (row[$0] - mean[$0]) / scale[$0] } }
        let head = LogisticRegression.fit(rows: standardised, labels: usable.map { $0.weakCorrect ? 1 : 0 }, settings: settings)
        return AnswerScorer(mean: mean, scale: scale, head: head)
    }

    /// The chance an OpenAI answer is right from its token log-probabilities: the exponential of their mean (the
    /// geometric-mean token probability), or nil when the answer carries none.
    public static func confidence(logprobs: JSONValue?) -> Double? {
        guard let tokens = logprobs?["content"]?.arrayValue, !tokens.isEmpty else { return nil }
        let values = tokens.compactMap { $0["logprob"]?.doubleValue }.filter { $0.isFinite && $0 <= 0 }
        guard !values.isEmpty else { return nil }
        return exp(values.reduce(0, +) / Double(values.count))
    }
}
