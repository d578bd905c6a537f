import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The mock's own JSON tree, decoded with Foundation's `JSONDecoder` — deliberately not the gateway's
/// reader or wire types, so that a bug in those cannot hide itself in tests.
enum MockJSON: Codable, Equatable, Sendable {
    case null, bool(Bool), number(Double), string(String), array([MockJSON]), object([String: MockJSON])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null; return }
        if let value = try? container.decode(Bool.self) { self = .bool(value); return }
        if let value = try? container.decode(Double.self) { self = .number(value); return }
        if let value = try? container.decode(String.self) { self = .string(value); return }
        if let value = try? container.decode([MockJSON].self) { self = .array(value); return }
        self = .object(try container.decode([String: MockJSON].self))
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value):
            if value == value.rounded(), abs(value) < 1e15 { try container.encode(Int64(value)) } else { try container.encode(value) }
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    subscript(key: String) -> MockJSON? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    var string: String? { if case .string(let value) = self { return value }; return nil }
    var number: Double? { if case .number(let value) = self { return value }; return nil }
    /// A number as an `Int` clamped to ±2^31 (the value is a client's: `Int(Double)` traps out of range).
    var boundedInt: Int? {
        guard let number, !number.isNaN else { return nil }
        return Int(Swift.min(Swift.max(number.rounded(.towardZero), -2_147_483_648), 2_147_483_648))
    }
    /// A number as 64 seed bits: the integer when it is one that fits, else the double's own bits.
    var seedBits: UInt64? {
        guard let number else { return nil }
        if let exact = Int64(exactly: number) { return UInt64(bitPattern: exact) }
        return number.bitPattern
    }
    var bool: Bool? { if case .bool(let value) = self { return value }; return nil }
    var array: [MockJSON]? { if case .array(let value) = self { return value }; return nil }

    /// The text of a prompt part, depth first: the value itself when it is a string, and inside objects only the
    /// members `text` and `content`, so that roles, block types and the JSON shape (a string or a list of text
    /// blocks) leave it unchanged.
    func collectText(into output: inout [String]) {
        switch self {
        case .string(let value): output.append(value)
        case .array(let values): for value in values { value.collectText(into: &output) }
        case .object(let members):
            for key in ["content", "text"] { members[key]?.collectText(into: &output) }
        default: break
        }
    }

    /// Every string inside the value, depth first.
    func collectStrings(into output: inout [String]) {
        switch self {
        case .string(let value): output.append(value)
        case .array(let values): for value in values { value.collectStrings(into: &output) }
        case .object(let members): for key in members.keys.sorted() { members[key]!.collectStrings(into: &output) }
        default: break
        }
    }
}

extension MockJSON: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral {
    init(stringLiteral value: String) { self = .string(value) }
    init(integerLiteral value: Int) { self = .number(Double(value)) }
    init(booleanLiteral value: Bool) { self = .bool(value) }
}

extension MockJSON {
    /// Writes the value as compact JSON (object keys sorted), without Foundation's encoder: the mock writes one
    /// event per token of every stream, and `JSONEncoder` boxed each value through `Codable`'s dynamic casts.
    func write(into buffer: inout ByteBuffer) {
        switch self {
        case .null: buffer.writeStaticString("null")
        case .bool(let value): buffer.writeStaticString(value ? "true" : "false")
        case .number(let value):
            if value == value.rounded(), abs(value) < 1e15 {
                buffer.writeString(String(Int64(value)))
            } else if value.isFinite {
                buffer.writeString(String(value))
            } else {
                buffer.writeStaticString("null")
            }
        case .string(let value): Self.writeString(value, into: &buffer)
        case .array(let values):
            buffer.writeInteger(UInt8(ascii: "["))
            for (index, value) in values.enumerated() {
                if index > 0 { buffer.writeInteger(UInt8(ascii: ",")) }
                value.write(into: &buffer)
            }
            buffer.writeInteger(UInt8(ascii: "]"))
        case .object(let members):
            buffer.writeInteger(UInt8(ascii: "{"))
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { buffer.writeInteger(UInt8(ascii: ",")) }
                Self.writeString(key, into: &buffer)
                buffer.writeInteger(UInt8(ascii: ":"))
                members[key]?.write(into: &buffer)
            }
            buffer.writeInteger(UInt8(ascii: "}"))
        }
    }

    private static func writeString(_ value: String, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "\""))
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): buffer.writeStaticString("\\\"")
            case UInt8(ascii: "\\"): buffer.writeStaticString("\\\\")
            case UInt8(ascii: "\n"): buffer.writeStaticString("\\n")
            case UInt8(ascii: "\r"): buffer.writeStaticString("\\r")
            case UInt8(ascii: "\t"): buffer.writeStaticString("\\t")
            case 0..<0x20:
                buffer.writeStaticString("\\u00")
                buffer.writeInteger(hex[Int(byte >> 4)])
                buffer.writeInteger(hex[Int(byte & 0xF)])
            default: buffer.writeInteger(byte)
            }
        }
        buffer.writeInteger(UInt8(ascii: "\""))
    }
}
