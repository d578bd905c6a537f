import NIOCore

/// Why bytes from a Redis server could not be read. Any of these leaves the connection unusable: the reply stream has
/// lost its framing, so the connection closes and every command waiting on it fails.
public enum RESPParseError: Error, Sendable, Hashable {
    /// A type byte RESP does not define.
    case unknownType(UInt8)
    /// A length, count or number that is not a decimal integer in range.
    case badNumber
    /// A bulk payload not followed by CRLF, or a line with a bare CR.
    case badFraming
    /// A boolean other than `t` or `f`, a double that is not one, a verbatim string without its format.
    case badValue
    /// Past a configured bound: a line, a bulk payload, an aggregate's element count, or nesting depth.
    case tooLarge
    /// RESP3 streamed strings and aggregates (`$?`, `*?`): Redis never sends them, so they are refused.
    case streamedType
}

/// An incremental RESP3 (and RESP2) reply parser: a pure state machine. Bytes go in as they arrive, in any split;
/// complete values come out in order. Nothing is parsed twice: a value's complete elements are kept as the bytes
/// of the rest arrive, and a line still without its CRLF is not scanned again from its start.
///
/// Everything is bounded (the server is trusted no more than a client): a line's length, a bulk payload's length,
/// an aggregate's element count and the nesting depth. Exceeding one, or any malformed byte, is an error, never a
/// trap.
public struct RESPParser: Sendable {
    public struct Limits: Sendable, Hashable {
        /// Longest simple string, error, number or header line (without CRLF).
        public var line: Int
        /// Longest bulk string, bulk error or verbatim string.
        public var bulk: Int
        /// Most elements in one array, set or push (a map's or attribute's pairs count twice).
        public var elements: Int
        /// Deepest nesting of aggregates.
        public var depth: Int

        public init(line: Int = 64 * 1024, bulk: Int = 512 * 1024 * 1024, elements: Int = 16 * 1024 * 1024, depth: Int = 64) {
            self.line = line
            self.bulk = bulk
            self.elements = elements
            self.depth = depth
        }
    }

    private enum Kind: Sendable {
        case array, map, set, push, attribute
    }

    private struct Frame: Sendable {
        var kind: Kind
        var expected: Int
        var items: [RESPValue]
    }

    private enum BulkKind: Sendable {
        case string, error, verbatim
    }

    public let limits: Limits
    private var buffer: ByteBuffer
    private var stack: [Frame] = []
    /// A bulk header read whose payload (and CRLF) has not fully arrived.
    private var awaitingBulk: (kind: BulkKind, length: Int)?
    /// How far past the reader index the search for CRLF has already looked without finding one.
    private var scanned = 0

    public init(limits: Limits = Limits()) {
        self.limits = limits
        buffer = ByteBufferAllocator().buffer(capacity: 0)
    }

    /// Bytes held for values not yet complete.
    public var bufferedBytes: Int { buffer.readableBytes }

    /// Whether a value has begun and not ended (a connection closing now would cut it).
    public var isMidValue: Bool { buffer.readableBytes > 0 || !stack.isEmpty || awaitingBulk != nil }

    /// Appends bytes from the server.
    public mutating func append(_ bytes: ByteBuffer) {
        if buffer.readerIndex > 0, buffer.readerIndex >= buffer.readableBytes {
            buffer.discardReadBytes()
        }
        var bytes = bytes
        buffer.writeBuffer(&bytes)
    }

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        append(ByteBuffer(bytes: Array(bytes)))
    }

    /// The next complete top-level value, or nil until more bytes arrive.
    public mutating func next() throws(RESPParseError) -> RESPValue? {
        while true {
            if let bulk = awaitingBulk {
                guard buffer.readableBytes >= bulk.length + 2 else { return nil }
                let payload = buffer.readBytes(length: bulk.length) ?? []
                guard buffer.readInteger(as: UInt8.self) == 13, buffer.readInteger(as: UInt8.self) == 10 else {
                    throw .badFraming
                }
                awaitingBulk = nil
                let value: RESPValue
                switch bulk.kind {
                case .string: value = .bulkString(payload)
                case .error: value = .error(RedisServerError(String(decoding: payload, as: UTF8.self)))
                case .verbatim:
                    // "txt:" then the text: a three-byte format and a colon.
                    guard payload.count >= 4, payload[3] == UInt8(ascii: ":") else { throw .badValue }
                    value = .verbatimString(format: String(decoding: payload[0..<3], as: UTF8.self), text: Array(payload[4...]))
                }
                if let done = try complete(value) { return done }
                continue
            }
            guard let line = try readLine() else { return nil }
            guard let type = line.first else { throw .unknownType(0) }
            let rest = line.dropFirst()
            switch type {
            case UInt8(ascii: "+"):
                if let done = try complete(.simpleString(String(decoding: rest, as: UTF8.self))) { return done }
            case UInt8(ascii: "-"):
                if let done = try complete(.error(RedisServerError(String(decoding: rest, as: UTF8.self)))) { return done }
            case UInt8(ascii: ":"):
                if let done = try complete(.integer(try Self.integer(rest))) { return done }
            case UInt8(ascii: "_"):
                guard rest.isEmpty else { throw .badValue }
                if let done = try complete(.null) { return done }
            case UInt8(ascii: "#"):
                guard rest.count == 1, let flag = rest.first, flag == UInt8(ascii: "t") || flag == UInt8(ascii: "f") else {
                    throw .badValue
                }
                if let done = try complete(.boolean(flag == UInt8(ascii: "t"))) { return done }
            case UInt8(ascii: ","):
                if let done = try complete(.double(try Self.double(rest))) { return done }
            case UInt8(ascii: "("):
                let digits = rest.first == UInt8(ascii: "-") || rest.first == UInt8(ascii: "+") ? rest.dropFirst() : rest
                guard !digits.isEmpty, digits.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { throw .badNumber }
                if let done = try complete(.bigNumber(String(decoding: rest, as: UTF8.self))) { return done }
            case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
                if rest.first == UInt8(ascii: "?") { throw .streamedType }
                let length = try Self.integer(rest)
                if length == -1, type == UInt8(ascii: "$") {
                    if let done = try complete(.null) { return done }
                    continue
                }
                guard length >= 0 else { throw .badNumber }
                guard length <= limits.bulk else { throw .tooLarge }
                let kind: BulkKind = type == UInt8(ascii: "$") ? .string : type == UInt8(ascii: "!") ? .error : .verbatim
                awaitingBulk = (kind, Int(length))
            case UInt8(ascii: "*"), UInt8(ascii: "%"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "|"):
                if rest.first == UInt8(ascii: "?") { throw .streamedType }
                let count = try Self.integer(rest)
                if count == -1, type == UInt8(ascii: "*") {
                    if let done = try complete(.null) { return done }
                    continue
                }
                guard count >= 0 else { throw .badNumber }
                let kind: Kind
                switch type {
                case UInt8(ascii: "*"): kind = .array
                case UInt8(ascii: "%"): kind = .map
                case UInt8(ascii: "~"): kind = .set
                case UInt8(ascii: ">"): kind = .push
                default: kind = .attribute
                }
                let pairs = kind == .map || kind == .attribute
                guard count <= (pairs ? Int64(limits.elements / 2) : Int64(limits.elements)) else { throw .tooLarge }
                let expected = Int(count) * (pairs ? 2 : 1)
                guard stack.count < limits.depth else { throw .tooLarge }
                if expected == 0 {
                    if kind == .attribute { continue }
                    if let done = try complete(Self.build(kind, [])) { return done }
                    continue
                }
                // Capacity only as elements arrive: a count is a claim, not bytes.
                stack.append(Frame(kind: kind, expected: expected, items: []))
            default:
                throw .unknownType(type)
            }
        }
    }

    /// Adds a finished value to the aggregate being read, closing every aggregate it completes; the top-level value
    /// when one is done.
    private mutating func complete(_ value: RESPValue) throws(RESPParseError) -> RESPValue? {
        var value = value
        while !stack.isEmpty {
            stack[stack.count - 1].items.append(value)
            let top = stack[stack.count - 1]
            guard top.items.count == top.expected else { return nil }
            stack.removeLast()
            // An attribute describes the value after it, which takes its place: read on.
            if top.kind == .attribute { return nil }
            value = Self.build(top.kind, top.items)
        }
        return value
    }

    private static func build(_ kind: Kind, _ items: [RESPValue]) -> RESPValue {
        switch kind {
        case .array, .attribute: return .array(items)
        case .set: return .set(items)
        case .push: return .push(items)
        case .map:
            return .map(stride(from: 0, to: items.count, by: 2).map { RESPValue.Pair(items[$0], items[$0 + 1]) })
        }
    }

    /// The next line without its CRLF, consumed; nil when it has not fully arrived.
    private mutating func readLine() throws(RESPParseError) -> [UInt8]? {
        let readable = buffer.readableBytes
        let found: Int? = buffer.withUnsafeReadableBytes { bytes in
            var index = max(scanned - 1, 0)
            while index + 1 < bytes.count {
                if bytes[index] == 13 {
                    if bytes[index + 1] == 10 { return index }
                }
                index += 1
            }
            return nil
        }
        guard let end = found else {
            scanned = readable
            if readable > limits.line + 1 { throw .tooLarge }
            return nil
        }
        scanned = 0
        guard end <= limits.line else { throw .tooLarge }
        let line = buffer.readBytes(length: end) ?? []
        buffer.moveReaderIndex(forwardBy: 2)
        if line.contains(13) { throw .badFraming }
        return line
    }

    /// A decimal integer in Int64's range: an optional sign, then 1 to 19 digits.
    static func integer(_ text: ArraySlice<UInt8>) throws(RESPParseError) -> Int64 {
        var digits = text[...]
        var negative = false
        if let sign = digits.first, sign == UInt8(ascii: "-") || sign == UInt8(ascii: "+") {
            negative = sign == UInt8(ascii: "-")
            digits = digits.dropFirst()
        }
        guard !digits.isEmpty, digits.count <= 19 else { throw .badNumber }
        var value: Int64 = 0
        for digit in digits {
            guard digit >= 48, digit <= 57 else { throw .badNumber }
            let (times, overflowTimes) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflowSum) = times.addingReportingOverflow(Int64(digit - 48))
            guard !overflowTimes, !overflowSum else { throw .badNumber }
            value = sum
        }
        return negative ? -value : value
    }

    /// A RESP3 double: `inf`, `-inf`, `nan`, or a decimal with an optional exponent.
    static func double(_ text: ArraySlice<UInt8>) throws(RESPParseError) -> Double {
        let string = String(decoding: text, as: UTF8.self)
        switch string {
        case "inf", "+inf": return .infinity
        case "-inf": return -.infinity
        case "nan", "-nan": return .nan
        default: break
        }
        let allowed = Set("0123456789.eE+-".utf8)
        guard !text.isEmpty, text.count <= 64, text.allSatisfy(allowed.contains), let value = Double(string) else {
            throw .badValue
        }
        return value
    }
}

/// Commands on the wire: an array of bulk strings, which every Redis version reads.
public enum RESPCommand {
    /// The command as an array of bulk strings, sized first and written in one go (written piece by piece, each of
    /// a script's twenty-odd arguments would pay the buffer's checks several times).
    public static func encode(_ arguments: [RedisArgument], into buffer: inout ByteBuffer) {
        var size = 3 + decimalDigits(Int64(arguments.count))
        for argument in arguments {
            let length = argument.encodedCount
            size += 5 + decimalDigits(Int64(length)) + length
        }
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
            var at = 0
            func put(_ byte: UInt8) {
                raw[at] = byte
                at += 1
            }
            func put(_ bytes: UnsafeRawBufferPointer) {
                guard let base = bytes.baseAddress, let target = raw.baseAddress, bytes.count > 0 else { return }
                target.advanced(by: at).copyMemory(from: base, byteCount: bytes.count)
                at += bytes.count
            }
            func putDecimal(_ value: Int64) {
                at += writeDecimal(value, into: UnsafeMutableRawBufferPointer(rebasing: raw[at...]))
            }
            func putLine() {
                put(UInt8(ascii: "\r"))
                put(UInt8(ascii: "\n"))
            }
            put(UInt8(ascii: "*"))
            putDecimal(Int64(arguments.count))
            putLine()
            for argument in arguments {
                put(UInt8(ascii: "$"))
                putDecimal(Int64(argument.encodedCount))
                putLine()
                switch argument {
                case .string(var text): text.withUTF8 { put(UnsafeRawBufferPointer($0)) }
                case .bytes(let bytes): bytes.withUnsafeBytes { put($0) }
                case .number(let value): putDecimal(value)
                }
                putLine()
            }
            return at
        }
    }

    /// `value` in decimal at the start of `out` (which has room: 20 bytes take any Int64); returns the bytes written.
    static func writeDecimal(_ value: Int64, into out: UnsafeMutableRawBufferPointer) -> Int {
        let count = decimalDigits(value)
        // The magnitude, so that Int64.min has one too; digits from the last.
        var rest = value.magnitude
        var at = count
        repeat {
            at -= 1
            out[at] = UInt8(ascii: "0") + UInt8(rest % 10)
            rest /= 10
        } while rest > 0
        if value < 0 { out[0] = UInt8(ascii: "-") }
        return count
    }

    /// How many bytes `writeDecimal` writes for `value`.
    static func decimalDigits(_ value: Int64) -> Int {
        var rest = value.magnitude, count = value < 0 ? 2 : 1
        while rest >= 10 {
            rest /= 10
            count += 1
        }
        return count
    }
}

/// One argument of a command: text, binary-safe bytes, or an integer (sent as its decimal text; `integer(_:)`
/// clamps to the range of `Int64`).
public enum RedisArgument: Sendable, Hashable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    case string(String)
    case bytes([UInt8])
    case number(Int64)

    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .number(Int64(value)) }
    public static func integer(_ value: some BinaryInteger) -> RedisArgument { .number(Int64(clamping: value)) }

    /// The bytes of its bulk string.
    var encodedCount: Int {
        switch self {
        case .string(let text): text.utf8.count
        case .bytes(let bytes): bytes.count
        case .number(let value): RESPCommand.decimalDigits(value)
        }
    }
}
