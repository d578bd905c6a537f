import HTTPEdge
import NIOCore
import NIOHTTP1
import SwitchyardCore

/// An HTTP/1.1 response parser for the upstream client, and the request framing that goes with it.
///
/// NIO's codec pair costs a pass through two channel handlers per request part and keeps a queue of request heads
/// to match answers to requests; the client sends one request at a time, only `POST`/`GET`, so it frames the
/// request into one buffer and parses the answer here: the status line and headers, then the body by
/// `Transfer-Encoding: chunked`, `Content-Length`, or until the connection closes. `1xx` answers are skipped;
/// `204` and `304` have no body.
struct HTTPResponseParser {
    enum Failure: Error, Equatable {
        case malformedHead
        case headTooLarge
        case malformedChunk
    }

    private enum State {
        case head
        case body(HTTPBodyReader)
    }

    private var state = State.head
    static let maximumHeadBytes = 80 * 1024

    /// Whether a body that runs until the connection closes is being read (`end` comes from `finish()`).
    var readsUntilClose: Bool {
        if case .body(let reader) = state { return reader.readsUntilClose }
        return false
    }

    /// Parses what `buffer` holds, passing each part to `emit`; leaves an incomplete line or head in `buffer`.
    mutating func parse(_ buffer: inout ByteBuffer, emit: (HTTPClientResponsePart) -> Void) throws(Failure) {
        while buffer.readableBytes > 0 {
            switch state {
            case .head:
                guard let end = HTTPWire.headEnd(in: buffer) else {
                    if buffer.readableBytes > Self.maximumHeadBytes { throw .headTooLarge }
                    return
                }
                let head = try Self.parseHead(buffer.readableBytesView.prefix(end))
                buffer.moveReaderIndex(forwardBy: end + 4)
                let code = head.status.code
                if code >= 100 && code < 200 && code != 101 { continue }
                emit(.head(head))
                if code == 204 || code == 304 {
                    emit(.end(nil))
                } else if Self.isChunked(head.headers) {
                    state = .body(HTTPBodyReader(.chunked))
                } else if let length = head.headers.first(name: "content-length") {
                    guard let count = Int(length), count >= 0 else { throw .malformedHead }
                    if count == 0 { emit(.end(nil)) } else { state = .body(HTTPBodyReader(.length(count))) }
                } else {
                    state = .body(HTTPBodyReader(.untilClose))
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
                    return
                }
                state = .head
                emit(.end(nil))
            }
        }
    }

    /// The connection closed: ends a body read until close.
    mutating func finish(emit: (HTTPClientResponsePart) -> Void) {
        if readsUntilClose {
            state = .head
            emit(.end(nil))
        }
    }

    private static func parseHead(_ bytes: ByteBufferView) throws(Failure) -> HTTPResponseHead {
        try bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) throws(Failure) -> HTTPResponseHead in
            // HTTP/1.x SSS reason
            let colon = UInt8(ascii: ":"), zero = UInt8(ascii: "0")
            guard raw.count >= 12, raw.starts(with: "HTTP/1.".utf8), raw[7] == zero || raw[7] == zero + 1,
                  raw[8] == UInt8(ascii: " ")
            else { throw .malformedHead }
            var code = 0
            for offset in 9..<12 {
                let digit = raw[offset]
                guard digit >= zero && digit <= zero + 9 else { throw .malformedHead }
                code = code * 10 + Int(digit - zero)
            }
            var headers = HTTPHeaders()
            var start = (raw.firstIndex(of: 0x0A) ?? raw.count - 1) + 1
            while start < raw.count {
                var end = start
                while end < raw.count && raw[end] != 0x0A { end += 1 }
                let next = end + 1
                if end > start && raw[end - 1] == 0x0D { end -= 1 }
                if end > start {
                    guard let split = raw[start..<end].firstIndex(of: colon), split > start else { throw .malformedHead }
                    var valueStart = split + 1, valueEnd = end
                    while valueStart < valueEnd && (raw[valueStart] == 0x20 || raw[valueStart] == 0x09) { valueStart += 1 }
                    while valueEnd > valueStart && (raw[valueEnd - 1] == 0x20 || raw[valueEnd - 1] == 0x09) { valueEnd -= 1 }
                    headers.add(name: String(decoding: UnsafeRawBufferPointer(rebasing: raw[start..<split]), as: UTF8.self),
                                value: String(decoding: UnsafeRawBufferPointer(rebasing: raw[valueStart..<valueEnd]), as: UTF8.self))
                }
                start = next
            }
            return HTTPResponseHead(version: .init(major: 1, minor: raw[7] == zero + 1 ? 1 : 0),
                                    status: HTTPResponseStatus(statusCode: code), headers: headers)
        }
    }

    /// Whether a `Transfer-Encoding` header lists `chunked` (in any case).
    static func isChunked(_ headers: HTTPHeaders) -> Bool {
        headers.contains {
            HeaderTokens.equals($0.name.utf8, "transfer-encoding") && HeaderTokens.list($0.value, contains: "chunked")
        }
    }

    /// Whether the connection may carry another request after this answer: HTTP/1.1 unless `Connection` says
    /// `close`, HTTP/1.0 only if it says `keep-alive`. (NIO's `isKeepAlive` builds lowercased copies of every header
    /// name: 1.2% of the proxy path's CPU.)
    static func isKeepAlive(_ head: HTTPResponseHead) -> Bool {
        var keepAlive = head.version.major > 1 || (head.version.major == 1 && head.version.minor >= 1)
        for (name, value) in head.headers where HeaderTokens.equals(name.utf8, "connection") {
            if HeaderTokens.list(value, contains: "close") { return false }
            if HeaderTokens.list(value, contains: "keep-alive") { keepAlive = true }
        }
        return keepAlive
    }

    /// Bodies up to this size are copied behind the head, so the request leaves in one `write` (not a `writev` of
    /// two buffers); larger ones follow the head as their own buffer.
    static let inlineBodyBytes = 64 << 10

    /// The request line, `host`, `content-length` and `headers` (any `host` or `content-length` among them
    /// replaced), the blank line, and the body when that is at most `inlineBodyBytes` long (`bodyIncluded`).
    static func frame(_ request: UpstreamRequest, allocator: ByteBufferAllocator) -> (buffer: ByteBuffer, bodyIncluded: Bool) {
        let inline = request.body.readableBytes <= inlineBodyBytes
        var buffer = allocator.buffer(capacity: 256 + (inline ? request.body.readableBytes : 0))
        buffer.writeString(request.method.rawValue)
        buffer.writeStaticString(" ")
        buffer.writeString(request.target)
        buffer.writeStaticString(" HTTP/1.1\r\nhost: ")
        buffer.writeString(request.endpoint.hostHeader)
        buffer.writeStaticString("\r\ncontent-length: ")
        buffer.writeString(String(request.body.readableBytes))
        buffer.writeStaticString("\r\n")
        for (name, value) in request.headers {
            if HeaderTokens.equals(name.utf8, "host") || HeaderTokens.equals(name.utf8, "content-length") { continue }
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
        if inline { buffer.writeImmutableBuffer(request.body) }
        return (buffer, inline)
    }
}
