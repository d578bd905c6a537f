public import NIOCore
public import NIOHTTP1

/// An HTTP/1.1 response parser for the upstream client (`Providers`), beside the edge's request parser whose rules it
/// shares.
///
/// NIO's codec pair costs a pass through two channel handlers per request part and keeps a queue of request heads
/// to match answers to requests; the client sends one request at a time, only `POST`/`GET`, so it frames the
/// request into one buffer and parses the answer here: the status line and headers, then the body by
/// `Transfer-Encoding: chunked`, `Content-Length`, or until the connection closes. `1xx` answers are skipped;
/// `204` and `304` have no body.
///
/// As strict as the edge's request parser (the same header-line rules, `HTTPWire.parseFields`): lines end in CRLF,
/// the status is three digits from 100 to 599, `Content-Length` is digits, and an answer with both
/// `Content-Length` and `Transfer-Encoding` is refused. It stops at the end of one answer: what follows in the
/// buffer is not parsed, so the connection's owner can see bytes that no request asked for.
public struct HTTPResponseParser: Sendable {
    public enum Failure: Error, Equatable {
        case malformedHead
        case headTooLarge
        case malformedChunk
    }

    private enum State {
        case head
        case body(HTTPBodyReader)
    }

    private var state = State.head
    private var scan = HTTPWire.HeadScan()
    public static let maximumHeadBytes = 80 * 1024

    public init() {}

    /// Whether a body that runs until the connection closes is being read (`end` comes from `finish()`).
    public var readsUntilClose: Bool {
        if case .body(let reader) = state { return reader.readsUntilClose }
        return false
    }

    /// Parses what `buffer` holds, passing each part to `emit`, up to the end of one answer; leaves an incomplete
    /// line or head, or the bytes after the answer's end, in `buffer`.
    /// - Returns: Whether an answer ended.
    @discardableResult
    public mutating func parse(_ buffer: inout ByteBuffer, emit: (HTTPClientResponsePart) -> Void) throws(Failure) -> Bool {
        while buffer.readableBytes > 0 {
            switch state {
            case .head:
                let end: Int
                switch scan.find(in: buffer) {
                case .end(let offset): end = offset
                case .bareLineFeed: throw .malformedHead
                case .incomplete:
                    if buffer.readableBytes > Self.maximumHeadBytes { throw .headTooLarge }
                    return false
                }
                scan.reset()
                guard end + 4 <= Self.maximumHeadBytes else { throw .headTooLarge }
                let (head, framing) = try Self.parseHead(buffer.readableBytesView.prefix(end + 2))
                buffer.moveReaderIndex(forwardBy: end + 4)
                let code = head.status.code
                if code >= 100 && code < 200 {
                    // Interim answers (100 Continue, 103 Early Hints) precede the real one; 101 is never asked for.
                    if code == 101 { throw .malformedHead }
                    continue
                }
                emit(.head(head))
                if code == 204 || code == 304 {
                    emit(.end(nil))
                    return true
                }
                switch framing {
                case .length(0):
                    emit(.end(nil))
                    return true
                case .length(let count): state = .body(HTTPBodyReader(.length(count)))
                case .chunked: state = .body(HTTPBodyReader(.chunked))
                case .untilClose: state = .body(HTTPBodyReader(.untilClose))
                }
            case .body(var reader):
                let ended: Bool
                do {
                    ended = try reader.read(&buffer) { emit(.body($0)) }
                } catch {
                    throw .malformedChunk
                }
                // Not ended: the reader took every byte it could (what is left is an incomplete line).
                guard ended else {
                    state = .body(reader)
                    return false
                }
                state = .head
                emit(.end(nil))
                return true
            }
        }
        return false
    }

    /// The connection closed: ends a body read until close.
    public mutating func finish(emit: (HTTPClientResponsePart) -> Void) {
        if readsUntilClose {
            state = .head
            emit(.end(nil))
        }
    }

    /// Parses a status line and headers, each line ending in CRLF (the final empty line excluded).
    static func parseHead(_ bytes: ByteBufferView) throws(Failure) -> (HTTPResponseHead, HTTPBodyReader.Framing) {
        try bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) throws(Failure) -> (HTTPResponseHead, HTTPBodyReader.Framing) in
            // HTTP/1.x SP 3DIGIT [SP reason]
            guard let lineEnd = HTTPWire.lineEnd(raw, from: 0), lineEnd >= 12, raw.starts(with: "HTTP/1.".utf8),
                  raw[7] == UInt8(ascii: "0") || raw[7] == UInt8(ascii: "1"), raw[8] == UInt8(ascii: " "),
                  lineEnd == 12 || raw[12] == UInt8(ascii: " "),
                  raw[9] >= UInt8(ascii: "1") && raw[9] <= UInt8(ascii: "5"),
                  HTTPWire.isDigit(raw[10]), HTTPWire.isDigit(raw[11]),
                  raw[12..<lineEnd].allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) })
            else { throw .malformedHead }
            let code = Int(raw[9] - 0x30) * 100 + Int(raw[10] - 0x30) * 10 + Int(raw[11] - 0x30)
            let fields: HTTPWire.Fields
            do {
                fields = try HTTPWire.parseFields(raw, from: lineEnd + 2)
            } catch {
                throw .malformedHead
            }
            // Both framings: a smuggling vector, and no honest upstream sends it.
            if fields.chunked && fields.contentLength != nil { throw .malformedHead }
            let framing: HTTPBodyReader.Framing =
                fields.chunked ? .chunked : fields.contentLength.map(HTTPBodyReader.Framing.length) ?? .untilClose
            let minor = raw[7] == UInt8(ascii: "1") ? 1 : 0
            return (HTTPResponseHead(version: .init(major: 1, minor: minor), status: HTTPResponseStatus(statusCode: code),
                                     headers: fields.headers), framing)
        }
    }

    /// Whether the connection may carry another request after this answer: HTTP/1.1 unless `Connection` says
    /// `close`, HTTP/1.0 only if it says `keep-alive`. (NIO's `isKeepAlive` builds lowercased copies of every header
    /// name: 1.2% of the proxy path's CPU.)
    public static func isKeepAlive(_ head: HTTPResponseHead) -> Bool {
        var keepAlive = head.version.major > 1 || (head.version.major == 1 && head.version.minor >= 1)
        for (name, value) in head.headers where HeaderTokens.equals(name.utf8, "connection") {
            if HeaderTokens.list(value, contains: "close") { return false }
            if HeaderTokens.list(value, contains: "keep-alive") { keepAlive = true }
        }
        return keepAlive
    }
}
