#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Answer lengths replayed from a production trace (such as `../shared/data/lengths/`): each request draws one
/// entry with its own seeded generator, so the lengths follow the trace's distribution and stay deterministic.
public struct MockLengthTrace: Sendable, Hashable {
    /// Answer lengths, one per row.
    public let lengths: [Int]
    /// Prompt lengths of the same rows (empty when the trace has none); `switchyard load` sends prompts this long.
    public let promptLengths: [Int]

    public init(lengths: [Int], promptLengths: [Int] = []) {
        self.lengths = lengths
        self.promptLengths = promptLengths
    }

    /// Reads a CSV with `GeneratedTokens` and, if present, `ContextTokens` columns (Azure LLM inference traces), or
    /// JSON lines with `output_length` and `input_length` (Mooncake traces).
    public init(path: String) throws(MockTraceError) {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw MockTraceError("cannot read \(path)")
        }
        var lengths: [Int] = [], prompts: [Int] = []
        if path.hasSuffix(".jsonl") {
            func number(_ key: String, in line: Substring) -> Int? {
                guard let range = line.firstRange(of: "\"\(key)\":") else { return nil }
                return Int(line[range.upperBound...].drop { $0 == " " }.prefix { $0.isNumber })
            }
            for line in text.split(whereSeparator: \.isNewline) {
                guard let output = number("output_length", in: line) else { continue }
                lengths.append(output)
                if let input = number("input_length", in: line) { prompts.append(input) }
            }
        } else {
            var rows = text.split(whereSeparator: \.isNewline).makeIterator()
            func trimmed(_ field: Substring) -> String { String(field.drop { $0 == " " }.reversed().drop { $0 == " " || $0 == "\r" }.reversed()) }
            guard let header = rows.next()?.split(separator: ",").map(trimmed),
                  let column = header.firstIndex(of: "GeneratedTokens") else {
                throw MockTraceError("\(path): no GeneratedTokens column")
            }
            let promptColumn = header.firstIndex(of: "ContextTokens")
            while let row = rows.next() {
                let fields = row.split(separator: ",", omittingEmptySubsequences: false)
                guard column < fields.count, let value = Int(trimmed(fields[column])) else { continue }
                lengths.append(value)
                if let promptColumn, promptColumn < fields.count, let prompt = Int(trimmed(fields[promptColumn])) {
                    prompts.append(prompt)
                }
            }
        }
        guard !lengths.isEmpty else { throw MockTraceError("\(path): no answer lengths found") }
        self.lengths = lengths.map { max(1, $0) }
        self.promptLengths = prompts.count == lengths.count ? prompts.map { max(1, $0) } : []
    }

    func draw(_ rng: inout SplitMix64) -> Int {
        lengths[Int(rng.next() % UInt64(lengths.count))]
    }
}

public struct MockTraceError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
