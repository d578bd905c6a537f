#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The cheap text features the complexity classifier reads beside the embedding, in one pass over the UTF-8 bytes.
public enum PromptFeatures {
    /// In the order `compute` returns them (and the classifier file lists them).
    public static let names = ["log_bytes", "log_numbers", "log_words", "newlines", "log_math_symbols", "log_sentences",
                               "log_code_marks", "turns", "tools"]

    /// - Parameters:
    ///   - turns: User messages in the conversation (the training prompts are single questions: 1).
    ///   - tools: Tools the request defines (none in the training prompts).
    public static func compute(_ text: String, turns: Int = 1, tools: Int = 0) -> [Float] {
        var bytes = 0, numbers = 0, words = 0, newlines = 0, symbols = 0, sentences = 0, code = 0
        var inNumber = false, inWord = false, pendingStop = false
        for byte in text.utf8 {
            bytes += 1
            let isDigit = byte >= 0x30 && byte <= 0x39
            if isDigit && !inNumber { numbers += 1 }
            // "3.5" and "1,000" are one number.
            inNumber = isDigit || (inNumber && (byte == UInt8(ascii: ".") || byte == UInt8(ascii: ",")))
            let isSpace = byte == 0x20 || byte == 0x0A || byte == 0x09 || byte == 0x0D
            if !isSpace && !inWord { words += 1 }
            inWord = !isSpace
            if byte == 0x0A { newlines += 1 }
            switch byte {
            case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "*"), UInt8(ascii: "/"), UInt8(ascii: "="), UInt8(ascii: "^"),
                 UInt8(ascii: "%"), UInt8(ascii: "$"):
                symbols += 1
            case UInt8(ascii: "{"), UInt8(ascii: "}"), UInt8(ascii: ";"), UInt8(ascii: "`"):
                code += 1
            default: break
            }
            if pendingStop && isSpace { sentences += 1 }
            pendingStop = byte == UInt8(ascii: ".") || byte == UInt8(ascii: "?") || byte == UInt8(ascii: "!")
        }
        if pendingStop { sentences += 1 }
        func logCount(_ value: Int) -> Float { Float(log1p(Double(value))) }
        return [logCount(bytes), logCount(numbers), logCount(words), Float(min(newlines, 1000)), logCount(symbols),
                logCount(sentences), logCount(code), Float(min(max(turns, 0), 1000)), Float(min(max(tools, 0), 1000))]
    }
}

