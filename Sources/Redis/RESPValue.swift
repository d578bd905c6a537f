/// One reply from a Redis server, in RESP3's types (RESP2's are a subset: its null bulk string and null array both
/// become `.null`).
///
/// Attributes (`|`) are out-of-band metadata the protocol lets a client skip; the parser reads and drops them. Push
/// messages (`>`) are kept apart from replies by the connection: they answer no command.
public enum RESPValue: Sendable, Hashable {
    case simpleString(String)
    /// A simple (`-`) or bulk (`!`) error: the code is its first word ("ERR", "NOSCRIPT", "MOVED", …).
    case error(RedisServerError)
    case integer(Int64)
    case bulkString([UInt8])
    case array([RESPValue])
    case null
    case boolean(Bool)
    case double(Double)
    /// Digits, with a sign, as sent: no arithmetic is done on them here.
    case bigNumber(String)
    case verbatimString(format: String, text: [UInt8])
    case map([Pair])
    case set([RESPValue])
    case push([RESPValue])

    public struct Pair: Sendable, Hashable {
        public var key: RESPValue
        public var value: RESPValue

        public init(_ key: RESPValue, _ value: RESPValue) {
            self.key = key
            self.value = value
        }
    }

    /// The value as text when it is one (simple, bulk or verbatim string).
    public var string: String? {
        switch self {
        case .simpleString(let text): text
        case .bulkString(let bytes), .verbatimString(_, let bytes): String(decoding: bytes, as: UTF8.self)
        default: nil
        }
    }

    /// The value's bytes when it is a string.
    public var bytes: [UInt8]? {
        switch self {
        case .simpleString(let text): Array(text.utf8)
        case .bulkString(let bytes), .verbatimString(_, let bytes): bytes
        default: nil
        }
    }

    public var integer: Int64? {
        if case .integer(let value) = self { return value }
        return nil
    }

    /// The elements of an array, set or push; a map's keys and values alternating (as RESP2 sends maps).
    public var elements: [RESPValue]? {
        switch self {
        case .array(let values), .set(let values), .push(let values): values
        case .map(let pairs): pairs.flatMap { [$0.key, $0.value] }
        default: nil
        }
    }

    /// A map's pairs, or an even array's (RESP2 sends maps as flat arrays).
    public var pairs: [Pair]? {
        switch self {
        case .map(let pairs): return pairs
        case .array(let values) where values.count % 2 == 0:
            return stride(from: 0, to: values.count, by: 2).map { Pair(values[$0], values[$0 + 1]) }
        default: return nil
        }
    }
}

/// An error reply from the server.
public struct RedisServerError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    /// The first word: "ERR", "WRONGTYPE", "NOSCRIPT", "MOVED", "ASK", "NOAUTH", …
    public var code: String {
        String(message.prefix { $0 != " " })
    }

    public var description: String { message }
}
