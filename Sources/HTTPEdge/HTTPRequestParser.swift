import NIOCore
import NIOHTTP1

/// The edge's HTTP/1.1 request parser.
///
/// NIO's decoder (llhttp behind a `ByteToMessageHandler`) cost 6% of the proxy path's CPU, mostly in the machinery
/// around the C parser: a handler hop and an enum wrap per part, and a `String` per header name that the
/// keep-alive check then lowercases again. This parser reads what the edge needs straight from the connection's
/// bytes: the request line, the headers, and the body by `Content-Length` or `Transfer-Encoding: chunked`.
///
/// It is strict where leniency lets a request be read two ways (request smuggling): lines end in CRLF, header names
/// are tokens followed directly by the colon, folded lines and control characters are refused, `Content-Length`
/// must be digits (repeated only with the same value), a request may not carry both `Content-Length` and
/// `Transfer-Encoding`, and `chunked` is the only transfer coding. Empty lines before a request line are skipped,
/// as RFC 9112 allows.
package struct HTTPRequestParser: Sendable {
    package enum Failure: Error, Equatable {
        case malformedRequestLine
        case malformedHeader
        case headTooLarge
        case unsupportedVersion
        case badContentLength
        /// Both `Content-Length` and `Transfer-Encoding`.
        case conflictingFraming
        case unsupportedTransferEncoding
        case malformedChunk
        /// A chunked body whose chunk sizes add up past the body limit.
        case bodyTooLarge
        /// `Transfer-Encoding` on an HTTP/1.0 request (1.0 has no transfer codings: a smuggling vector).
        case transferEncodingOnHTTP10

        /// The status the edge answers with before closing the connection.
        var status: HTTPResponseStatus {
            switch self {
            case .headTooLarge: .requestHeaderFieldsTooLarge
            case .bodyTooLarge: .payloadTooLarge
            case .unsupportedVersion: .httpVersionNotSupported
            case .unsupportedTransferEncoding: .notImplemented
            default: .badRequest
            }
        }

        var reason: String {
            switch self {
            case .malformedRequestLine: "malformed request line"
            case .malformedHeader: "malformed header line"
            case .headTooLarge: "request head larger than \(HTTPRequestParser.maximumHeadBytes) bytes"
            case .unsupportedVersion: "only HTTP/1.0 and HTTP/1.1 are served"
            case .badContentLength: "invalid Content-Length"
            case .conflictingFraming: "both Content-Length and Transfer-Encoding"
            case .unsupportedTransferEncoding: "the only supported transfer coding is chunked"
            case .malformedChunk: "malformed chunked body"
            case .bodyTooLarge: "request body larger than the limit"
            case .transferEncodingOnHTTP10: "Transfer-Encoding is not allowed in HTTP/1.0"
            }
        }
    }

    package enum Part {
        case head(HTTPRequestHead, keepAlive: Bool)
        case body(ByteBuffer)
        case end
    }

    private enum State {
        case head
        case body(HTTPBodyReader)
    }

    private var state = State.head
    private var scan = HTTPWire.HeadScan()
    package static let maximumHeadBytes = 64 * 1024
    /// The largest chunked body read: a chunk size past it is refused as soon as its line arrives.
    let maximumChunkedBodyBytes: Int

    package init(maximumChunkedBodyBytes: Int = .max) {
        self.maximumChunkedBodyBytes = maximumChunkedBodyBytes
    }

    /// Parses what `buffer` holds, passing each part to `emit`, up to the end of one request; leaves an incomplete
    /// head or line, or the bytes after the request's end, in `buffer`.
    /// - Returns: Whether a request ended.
    @discardableResult
    package mutating func parse(_ buffer: inout ByteBuffer, emit: (Part) -> Void) throws(Failure) -> Bool {
        while buffer.readableBytes > 0 {
            switch state {
            case .head:
                // Empty lines before a request line are allowed (a client's stray CRLF after a body).
                while buffer.readableBytesView.starts(with: [0x0D, 0x0A]) {
                    buffer.moveReaderIndex(forwardBy: 2)
                    scan.reset()
                }
                guard buffer.readableBytes > 0 else { return false }
                let end: Int
                switch scan.find(in: buffer) {
                case .end(let offset): end = offset
                case .bareLineFeed: throw .malformedHeader
                case .incomplete:
                    if buffer.readableBytes > Self.maximumHeadBytes { throw .headTooLarge }
                    return false
                }
                scan.reset()
                guard end + 4 <= Self.maximumHeadBytes else { throw .headTooLarge }
                let head = try Self.parseHead(buffer.readableBytesView.prefix(end + 2))
                buffer.moveReaderIndex(forwardBy: end + 4)
                emit(.head(head.head, keepAlive: head.keepAlive))
                switch head.framing {
                case .none, .length(0):
                    emit(.end)
                    return true
                case .length(let length):
                    state = .body(HTTPBodyReader(.length(length)))
                case .chunked:
                    state = .body(HTTPBodyReader(.chunked, maximumBytes: maximumChunkedBodyBytes))
                }
            case .body(var reader):
                let ended: Bool
                do {
                    ended = try reader.read(&buffer) { emit(.body($0)) }
                } catch {
                    throw error.tooLarge ? .bodyTooLarge : .malformedChunk
                }
                // Not ended: the reader took every byte it could (what is left is an incomplete line).
                guard ended else {
                    state = .body(reader)
                    return false
                }
                state = .head
                emit(.end)
                return true
            }
        }
        return false
    }

    // MARK: Head

    enum Framing: Equatable {
        case none
        case length(Int)
        case chunked
    }

    struct Head {
        var head: HTTPRequestHead
        var keepAlive: Bool
        var framing: Framing
    }

    /// Parses a request line and headers, each line ending in CRLF (the final empty line excluded).
    static func parseHead(_ bytes: ByteBufferView) throws(Failure) -> Head {
        try bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) throws(Failure) -> Head in
            guard let requestLineEnd = HTTPWire.lineEnd(raw, from: 0) else { throw .malformedRequestLine }
            // method SP request-target SP HTTP-version
            guard let space = raw[0..<requestLineEnd].firstIndex(of: 0x20), space > 0,
                  raw[0..<space].allSatisfy(HTTPWire.isTokenByte)
            else { throw .malformedRequestLine }
            let targetStart = space + 1
            guard let targetEnd = raw[targetStart..<requestLineEnd].firstIndex(of: 0x20), targetEnd > targetStart,
                  raw[targetStart..<targetEnd].allSatisfy({ $0 > 0x20 && $0 != 0x7F })
            else { throw .malformedRequestLine }
            let version = UnsafeRawBufferPointer(rebasing: raw[(targetEnd + 1)..<requestLineEnd])
            guard version.count == 8, version.starts(with: "HTTP/".utf8), version[6] == UInt8(ascii: "."),
                  HTTPWire.isDigit(version[5]), HTTPWire.isDigit(version[7])
            else { throw .malformedRequestLine }
            guard version[5] == UInt8(ascii: "1"), version[7] <= UInt8(ascii: "1") else { throw .unsupportedVersion }
            let minor = Int(version[7] - UInt8(ascii: "0"))

            let fields: HTTPWire.Fields
            do throws(HTTPWire.FieldError) {
                fields = try HTTPWire.parseFields(raw, from: requestLineEnd + 2)
            } catch {
                switch error {
                case .malformedHeader: throw .malformedHeader
                case .badContentLength: throw .badContentLength
                case .unsupportedTransferEncoding: throw .unsupportedTransferEncoding
                }
            }
            let (headers, close, keepAliveToken) = (fields.headers, fields.close, fields.keepAlive)
            if fields.chunked && fields.contentLength != nil { throw .conflictingFraming }
            if fields.chunked && minor == 0 { throw .transferEncodingOnHTTP10 }
            let framing: Framing = fields.chunked ? .chunked : fields.contentLength.map(Framing.length) ?? .none
            let method = HTTPMethod(rawValue: String(decoding: UnsafeRawBufferPointer(rebasing: raw[0..<space]), as: UTF8.self))
            let uri = String(decoding: UnsafeRawBufferPointer(rebasing: raw[targetStart..<targetEnd]), as: UTF8.self)
            let head = HTTPRequestHead(version: .init(major: 1, minor: minor), method: method, uri: uri, headers: headers)
            return Head(head: head, keepAlive: !close && (minor == 1 || keepAliveToken), framing: framing)
        }
    }

}

/// Comparisons of header names and comma-separated header values as bytes: no `Character` walking, no lowercased
/// copies.
public enum HeaderTokens {
    /// ASCII case-insensitive equality with a lowercase literal.
    public static func equals(_ bytes: some Collection<UInt8>, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        var index = 0
        for byte in bytes {
            let folded = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            guard folded == lowercase.utf8Start[index] else { return false }
            index += 1
        }
        return true
    }

    /// The bytes without leading and trailing spaces and tabs.
    public static func trimmed<C: BidirectionalCollection<UInt8>>(_ bytes: C) -> C.SubSequence {
        var start = bytes.startIndex, end = bytes.endIndex
        while start < end && (bytes[start] == 0x20 || bytes[start] == 0x09) { start = bytes.index(after: start) }
        while end > start && (bytes[bytes.index(before: end)] == 0x20 || bytes[bytes.index(before: end)] == 0x09) {
            end = bytes.index(before: end)
        }
        return bytes[start..<end]
    }

    /// Whether the comma-separated list `value` holds `token` (ASCII case-insensitive).
    public static func list(_ value: String, contains token: StaticString) -> Bool {
        value.utf8.split(separator: UInt8(ascii: ",")).contains { equals(trimmed($0), token) }
    }
}

/// Byte-level pieces both HTTP/1.1 parsers (the edge's request parser and the upstream client's response parser) use.
public enum HTTPWire {
    /// The search for the end of a head (`\r\n\r\n`) in bytes that arrive piece by piece: each call resumes where the
    /// last stopped, so a head sent a byte at a time costs its length once, not its length squared. It also refuses a
    /// line feed without its carriage return as soon as one arrives: such a head would never reach its end.
    public struct HeadScan: Sendable {
        public enum Result: Equatable {
            /// The offset of the `\r\n\r\n` that ends the head.
            case end(Int)
            case incomplete
            case bareLineFeed
        }

        /// Bytes from the reader index already searched.
        private var scanned = 0

        public init() {}

        /// Call with the same unread bytes plus what arrived since; `reset()` once the head is consumed.
        public mutating func find(in buffer: ByteBuffer) -> Result {
            let start = scanned
            let result = buffer.withUnsafeReadableBytes { bytes -> Result in
                var index = start
                while index < bytes.count {
                    guard let newline = bytes[index...].firstIndex(of: 0x0A) else { return .incomplete }
                    if newline == 0 || bytes[newline - 1] != 0x0D { return .bareLineFeed }
                    if newline >= 3 && bytes[newline - 2] == 0x0A && bytes[newline - 3] == 0x0D { return .end(newline - 3) }
                    index = newline + 1
                }
                return .incomplete
            }
            scanned = buffer.readableBytes
            return result
        }

        public mutating func reset() { scanned = 0 }
    }

    public enum FieldError: Error, Equatable {
        case malformedHeader
        case badContentLength
        case unsupportedTransferEncoding
    }

    /// A head's header fields, and what they say about framing and the connection.
    public struct Fields {
        public var headers = HTTPHeaders()
        public var contentLength: Int?
        /// `Transfer-Encoding: chunked` (the only coding accepted).
        public var chunked = false
        /// `Connection: close`.
        public var close = false
        /// `Connection: keep-alive`.
        public var keepAlive = false
    }

    /// Parses header lines from `start` to the end of `raw`, each ending in CRLF. Strict where leniency lets a message
    /// be read two ways: names are tokens followed directly by the colon, folded lines and control characters are
    /// refused, `Content-Length` must be digits (repeated only with the same value), and `chunked` is the only
    /// transfer coding.
    public static func parseFields(_ raw: UnsafeRawBufferPointer, from start: Int) throws(FieldError) -> Fields {
        var fields = Fields()
        var start = start
        while start < raw.count {
            guard let end = lineEnd(raw, from: start) else { throw .malformedHeader }
            let line = UnsafeRawBufferPointer(rebasing: raw[start..<end])
            try checkHeaderLine(line)
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { throw .malformedHeader }
            var valueStart = colon + 1, valueEnd = line.count
            while valueStart < valueEnd && (line[valueStart] == 0x20 || line[valueStart] == 0x09) { valueStart += 1 }
            while valueEnd > valueStart && (line[valueEnd - 1] == 0x20 || line[valueEnd - 1] == 0x09) { valueEnd -= 1 }
            let name = UnsafeRawBufferPointer(rebasing: line[0..<colon])
            let value = UnsafeRawBufferPointer(rebasing: line[valueStart..<valueEnd])
            if HeaderTokens.equals(name, "content-length") {
                for item in value.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
                    let digits = HeaderTokens.trimmed(item)
                    guard !digits.isEmpty, digits.count <= 18, digits.allSatisfy(isDigit) else { throw .badContentLength }
                    let length = digits.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
                    guard fields.contentLength == nil || fields.contentLength == length else { throw .badContentLength }
                    fields.contentLength = length
                }
            } else if HeaderTokens.equals(name, "transfer-encoding") {
                // Only `chunked`, once: any other coding (or `chunked` twice) is refused.
                for item in value.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: true) {
                    guard HeaderTokens.equals(HeaderTokens.trimmed(item), "chunked"), !fields.chunked else {
                        throw .unsupportedTransferEncoding
                    }
                    fields.chunked = true
                }
            } else if HeaderTokens.equals(name, "connection") {
                for item in value.split(separator: UInt8(ascii: ",")) {
                    let token = HeaderTokens.trimmed(item)
                    if HeaderTokens.equals(token, "close") { fields.close = true }
                    if HeaderTokens.equals(token, "keep-alive") { fields.keepAlive = true }
                }
            }
            fields.headers.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
            start = end + 2
        }
        return fields
    }

    /// A header (or trailer) line: a token, a colon, then a value without control characters other than tab.
    /// Lines starting with whitespace (obsolete folding) are refused.
    public static func checkHeaderLine(_ line: some Collection<UInt8>) throws(HTTPWire.FieldError) {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon != line.startIndex,
              line[line.startIndex..<colon].allSatisfy(isTokenByte),
              line[line.index(after: colon)...].allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) })
        else { throw .malformedHeader }
    }

    /// The index of the CR of the CRLF ending the line that starts at `start`; `nil` if a bare CR or LF comes first
    /// or the line does not end.
    public static func lineEnd(_ raw: UnsafeRawBufferPointer, from start: Int) -> Int? {
        var index = start
        while index < raw.count {
            switch raw[index] {
            case 0x0D: return index + 1 < raw.count && raw[index + 1] == 0x0A ? index : nil
            case 0x0A: return nil
            default: index += 1
            }
        }
        return nil
    }

    public static func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    /// RFC 9110 `tchar`.
    public static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
             UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            true
        default:
            false
        }
    }
}

/// A message body framed by `Content-Length`, by chunked transfer coding, or by the connection's end, read from the
/// connection's bytes: shared by the edge's request parser and the upstream client's response parser.
///
/// Strict where a lenient reading could disagree with the peer's: chunk-size lines are hex digits, optional
/// whitespace and `;` extensions, ending in CRLF; chunk data is followed by CRLF; trailer lines are header lines.
public struct HTTPBodyReader: Sendable {
    public enum Framing: Sendable {
        case length(Int)
        case chunked
        /// Until the connection closes (responses only).
        case untilClose
    }

    public struct Malformed: Error, Equatable {
        /// The body went past the reader's `maximumBytes` (the framing itself was well formed).
        public var tooLarge = false
        public init(tooLarge: Bool = false) { self.tooLarge = tooLarge }
    }

    private enum State: Sendable {
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case untilClose
    }

    private var state: State
    /// Chunked bodies only: the most bytes the chunk sizes may add up to, and what they added up to so far.
    private let maximumBytes: Int
    private var declared = 0
    /// The longest chunk-size or trailer line.
    public static let maximumLineBytes = 4096

    /// - Parameter maximumBytes: For chunked bodies, the largest total accepted: a chunk size past it is refused as
    ///   soon as its line arrives.
    public init(_ framing: Framing, maximumBytes: Int = .max) {
        self.maximumBytes = maximumBytes
        switch framing {
        case .length(let length): state = .fixed(remaining: length)
        case .chunked: state = .chunkSize
        case .untilClose: state = .untilClose
        }
    }

    /// Whether the body runs until the connection closes.
    public var readsUntilClose: Bool {
        if case .untilClose = state { return true }
        return false
    }

    /// Passes the body bytes `buffer` holds to `body`; returns whether the body ended (what is left in `buffer`
    /// then belongs to the next message). An incomplete line stays in `buffer`.
    public mutating func read(_ buffer: inout ByteBuffer, body: (ByteBuffer) -> Void) throws(Malformed) -> Bool {
        while buffer.readableBytes > 0 {
            switch state {
            case .fixed(let remaining):
                let count = min(remaining, buffer.readableBytes)
                body(buffer.readSlice(length: count)!)
                if count == remaining { return true }
                state = .fixed(remaining: remaining - count)
            case .chunkSize:
                guard let line = try Self.readLine(&buffer) else { return false }
                let size = try Self.chunkSize(line)
                guard size <= maximumBytes - declared else { throw Malformed(tooLarge: true) }
                declared += size
                state = size == 0 ? .trailers : .chunkData(remaining: size)
            case .chunkData(let remaining):
                let count = min(remaining, buffer.readableBytes)
                body(buffer.readSlice(length: count)!)
                state = count == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - count)
            case .chunkDataEnd:
                guard buffer.readableBytes >= 2 else { return false }
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw Malformed() }
                state = .chunkSize
            case .trailers:
                guard let line = try Self.readLine(&buffer) else { return false }
                if line.isEmpty { return true }
                do {
                    try HTTPWire.checkHeaderLine(line)
                } catch {
                    throw Malformed()
                }
            case .untilClose:
                body(buffer.readSlice(length: buffer.readableBytes)!)
            }
        }
        return false
    }

    /// Reads one line ending in CRLF (without it), or nothing while the line is incomplete.
    private static func readLine(_ buffer: inout ByteBuffer) throws(Malformed) -> [UInt8]? {
        guard let newline = buffer.readableBytesView.firstIndex(of: 0x0A) else {
            if buffer.readableBytes > maximumLineBytes { throw Malformed() }
            return nil
        }
        let length = newline - buffer.readerIndex
        guard length <= maximumLineBytes else { throw Malformed() }
        var line = buffer.readBytes(length: length + 1)!
        line.removeLast()
        guard line.last == 0x0D else { throw Malformed() }
        line.removeLast()
        return line
    }

    /// A chunk-size line: hex digits, then optionally whitespace and `;` extensions (ignored).
    private static func chunkSize(_ line: [UInt8]) throws(Malformed) -> Int {
        var size = 0
        var digits = 0
        var index = 0
        while index < line.count, let value = hexValue(line[index]) {
            guard digits < 15 else { throw Malformed() }
            size = size * 16 + value
            digits += 1
            index += 1
        }
        guard digits > 0 else { throw Malformed() }
        while index < line.count && (line[index] == 0x20 || line[index] == 0x09) { index += 1 }
        guard index == line.count || line[index] == UInt8(ascii: ";") else { throw Malformed() }
        return size
    }

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte - UInt8(ascii: "A")) + 10
        default: nil
        }
    }
}
