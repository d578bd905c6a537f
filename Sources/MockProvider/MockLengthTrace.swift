#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Answer lengths replayed from a production trace (such as `../shared/data/lengths/`): each request draws one
/// entry with its own seeded generator, so the lengths follow the trace's distribution and stay deterministic.
public struct MockLengthTrace: Sendable, Hashable {
    public let lengths: [Int]

    public init(lengths: [Int]) { self.lengths = lengths }

    /// Reads a CSV with a `GeneratedTokens` column (Azure LLM inference traces) or JSON lines with `output_length`
    /// (Mooncake traces).
    public init(path: String) throws(MockTraceError) {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw MockTraceError("cannot read \(path)")
        }
        var lengths: [Int] = []
        if path.hasSuffix(".jsonl") {
            for line in text.split(whereSeparator: \.isNewline) {
                guard let range = line.firstRange(of: "\"output_length\":") else { continue }
                let digits = line[range.upperBound...].drop { $0 == " " }.prefix { $0.isNumber }
                if let value = Int(digits) { lengths.append(value) }
            }
        } else {
            var rows = text.split(whereSeparator: \.isNewline).makeIterator()
            func trimmed(_ field: Substring) -> String { String(field.drop { $0 == " " }.reversed().drop { $0 == " " || $0 == "\r" }.reversed()) }
            guard let header = rows.next()?.split(separator: ",").map(trimmed),
                  let column = header.firstIndex(of: "GeneratedTokens") else {
                throw MockTraceError("\(path): no GeneratedTokens column")
            }
            while let row = rows.next() {
                let fields = row.split(separator: ",", omittingEmptySubsequences: false)
                if column < fields.count, let value = Int(trimmed(fields[column])) { lengths.append(value) }
            }
        }
        guard !lengths.isEmpty else { throw MockTraceError("\(path): no answer lengths found") }
        self.lengths = lengths.map { max(1, $0) }
    }

    func draw(_ rng: inout SplitMix64) -> Int {
        lengths[Int(rng.next() % UInt64(lengths.count))]
    }
}

public struct MockTraceError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
