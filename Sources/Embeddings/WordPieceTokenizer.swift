import Foundation

/// BERT uncased WordPiece tokenization, matching Hugging Face's `BertTokenizer`/`BertNormalizer` for
/// all-MiniLM-L6-v2: text cleanup, CJK characters split out, lower-casing with accent stripping (NFD, drop
/// combining marks), punctuation split, greedy longest-match WordPiece with `##` continuations, `[UNK]` for words
/// that cannot be split, `[CLS]`/`[SEP]` around, truncation to `maximumLength` tokens.
public struct WordPieceTokenizer: Sendable {
    let vocabulary: [String: Int32]
    public let clsID: Int32
    public let sepID: Int32
    public let unknownID: Int32
    public let padID: Int32
    /// Longest sequence produced, `[CLS]` and `[SEP]` included.
    public let maximumLength: Int
    static let maximumCharactersPerWord = 100

    /// - Parameter vocabulary: The lines of `vocab.txt`; a token's id is its line number.
    public init(vocabulary lines: [Substring], maximumLength: Int = 256) throws(EmbeddingError) {
        var vocabulary: [String: Int32] = [:]
        vocabulary.reserveCapacity(lines.count)
        for (index, line) in lines.enumerated() where !line.isEmpty {
            vocabulary[String(line)] = Int32(index)
        }
        guard let cls = vocabulary["[CLS]"], let sep = vocabulary["[SEP]"], let unk = vocabulary["[UNK]"],
              let pad = vocabulary["[PAD]"] else { throw EmbeddingError.invalidModel("vocab.txt lacks special tokens") }
        self.vocabulary = vocabulary
        (self.clsID, self.sepID, self.unknownID, self.padID) = (cls, sep, unk, pad)
        self.maximumLength = maximumLength
    }

    /// Loads `vocab.txt`.
    public init(vocabularyFile path: String, maximumLength: Int = 256) throws(EmbeddingError) {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw EmbeddingError.invalidModel("cannot read \(path)")
        }
        try self.init(vocabulary: text.split(separator: "\n", omittingEmptySubsequences: false).map {
            $0.hasSuffix("\r") ? $0.dropLast() : $0
        }, maximumLength: maximumLength)
    }

    /// Token ids for `text`, with `[CLS]` and `[SEP]`, truncated to `maximumLength`.
    public func encode(_ text: String) -> [Int32] {
        var ids: [Int32] = [clsID]
        let limit = maximumLength - 1
        outer: for word in basicTokens(text) {
            for id in wordPieces(word) {
                if ids.count == limit { break outer }
                ids.append(id)
            }
        }
        ids.append(sepID)
        return ids
    }

    // MARK: Basic tokenization

    func basicTokens(_ text: String) -> [String] {
        // Clean up and split CJK characters out.
        var cleaned = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            let value = scalar.value
            if value == 0 || value == 0xFFFD || Self.isControl(scalar) { continue }
            if Self.isWhitespace(scalar) {
                cleaned.append(" ")
            } else if Self.isCJK(value) {
                cleaned.append(" ")
                cleaned.append(scalar)
                cleaned.append(" ")
            } else {
                cleaned.append(scalar)
            }
        }
        var tokens: [String] = []
        for word in String(cleaned).split(separator: " ", omittingEmptySubsequences: true) {
            // Lower-case, then strip accents: NFD and drop nonspacing marks.
            let lowered = word.lowercased().decomposedStringWithCanonicalMapping
            var current = String.UnicodeScalarView()
            for scalar in lowered.unicodeScalars {
                if scalar.properties.generalCategory == .nonspacingMark { continue }
                if Self.isPunctuation(scalar) {
                    if !current.isEmpty { tokens.append(String(current)); current = String.UnicodeScalarView() }
                    tokens.append(String(scalar))
                } else {
                    current.append(scalar)
                }
            }
            if !current.isEmpty { tokens.append(String(current)) }
        }
        return tokens
    }

    func wordPieces(_ word: String) -> [Int32] {
        let scalars = Array(word.unicodeScalars)
        if scalars.count > Self.maximumCharactersPerWord { return [unknownID] }
        var pieces: [Int32] = []
        var start = 0
        while start < scalars.count {
            var end = scalars.count
            var found: Int32?
            while start < end {
                var candidate = String(String.UnicodeScalarView(scalars[start..<end]))
                if start > 0 { candidate = "##" + candidate }
                if let id = vocabulary[candidate] {
                    found = id
                    break
                }
                end -= 1
            }
            guard let id = found else { return [unknownID] }
            pieces.append(id)
            start = end
        }
        return pieces
    }

    static func isWhitespace(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case " ", "\t", "\n", "\r": return true
        default: return scalar.properties.generalCategory == .spaceSeparator
        }
    }

    static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case "\t", "\n", "\r": return false
        default:
            let category = scalar.properties.generalCategory
            return category == .control || category == .format
        }
    }

    static func isPunctuation(_ scalar: Unicode.Scalar) -> Bool {
        let value = scalar.value
        if (33...47).contains(value) || (58...64).contains(value) || (91...96).contains(value) || (123...126).contains(value) {
            return true
        }
        switch scalar.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
             .finalPunctuation, .otherPunctuation:
            return true
        default:
            return false
        }
    }

    static func isCJK(_ value: UInt32) -> Bool {
        (0x4E00...0x9FFF).contains(value) || (0x3400...0x4DBF).contains(value) || (0x20000...0x2A6DF).contains(value)
            || (0x2A700...0x2B73F).contains(value) || (0x2B740...0x2B81F).contains(value)
            || (0x2B820...0x2CEAF).contains(value) || (0xF900...0xFAFF).contains(value)
            || (0x2F800...0x2FA1F).contains(value)
    }
}

/// Why the encoder cannot load or run.
public enum EmbeddingError: Error, Sendable, Hashable, CustomStringConvertible {
    case invalidModel(String)
    case modelUnavailable(String)

    public var description: String {
        switch self {
        case .invalidModel(let reason): "invalid model files: \(reason)"
        case .modelUnavailable(let reason): "model unavailable: \(reason)"
        }
    }
}
