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
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case untilClose
    }

    private var state = State.head
    static let maximumHeadBytes = 80 * 1024

    /// Whether a body that runs until the connection closes is being read (`end` comes from `finish()`).
    var readsUntilClose: Bool {
        if case .untilClose = state { return true }
        return false
    }

    /// Parses what `buffer` holds, passing each part to `emit`; leaves an incomplete line or head in `buffer`.
    mutating func parse(_ buffer: inout ByteBuffer, emit: (HTTPClientResponsePart) -> Void) throws(Failure) {
        while buffer.readableBytes > 0 {
            switch state {
            case .head:
                guard let end = Self.find(crlfcrlf: buffer) else {
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
                } else if head.headers[canonicalForm: "transfer-encoding"].contains(where: { $0.lowercased() == "chunked" }) {
                    state = .chunkSize
                } else if let length = head.headers.first(name: "content-length") {
                    guard let count = Int(length.trimmingWhitespace()), count >= 0 else { throw .malformedHead }
                    if count == 0 { emit(.end(nil)) } else { state = .fixed(remaining: count) }
                } else {
                    state = .untilClose
                }
            case .fixed(let remaining):
                let count = min(remaining, buffer.readableBytes)
                emit(.body(buffer.readSlice(length: count)!))
                if count == remaining {
                    state = .head
                    emit(.end(nil))
                } else {
                    state = .fixed(remaining: remaining - count)
                }
            case .chunkSize:
                guard let line = Self.readLine(&buffer) else { return try Self.checkLine(buffer) }
                let digits = line.prefix { $0 != UInt8(ascii: ";") }.filter { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\t") }
                guard !digits.isEmpty, digits.count <= 15, let size = Int(String(decoding: digits, as: UTF8.self), radix: 16)
                else { throw .malformedChunk }
                state = size == 0 ? .trailers : .chunkData(remaining: size)
            case .chunkData(let remaining):
                let count = min(remaining, buffer.readableBytes)
                emit(.body(buffer.readSlice(length: count)!))
                state = count == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - count)
            case .chunkDataEnd:
                guard buffer.readableBytes >= 2 else { return }
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw .malformedChunk }
                state = .chunkSize
            case .trailers:
                guard let line = Self.readLine(&buffer) else { return try Self.checkLine(buffer) }
                if line.isEmpty {
                    state = .head
                    emit(.end(nil))
                }
            case .untilClose:
                emit(.body(buffer.readSlice(length: buffer.readableBytes)!))
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

    private static func checkLine(_ buffer: ByteBuffer) throws(Failure) {
        if buffer.readableBytes > 4096 { throw .malformedChunk }
    }

    /// The offset of the first `\r\n\r\n` in the readable bytes.
    private static func find(crlfcrlf buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            guard bytes.count >= 4 else { return nil }
            var index = 0
            while index + 3 < bytes.count {
                if bytes[index + 3] != 0x0A {
                    index += 1
                    continue
                }
                if bytes[index] == 0x0D && bytes[index + 1] == 0x0A && bytes[index + 2] == 0x0D { return index }
                index += 1
            }
            return nil
        }
    }

    /// Reads one line ending in `\r\n` (without it), or nothing while the line is incomplete.
    private static func readLine(_ buffer: inout ByteBuffer) -> [UInt8]? {
        guard let newline = buffer.readableBytesView.firstIndex(of: 0x0A) else { return nil }
        let length = newline - buffer.readerIndex
        var line = buffer.readBytes(length: length + 1)!
        line.removeLast()
        if line.last == 0x0D { line.removeLast() }
        return line
    }

    private static func parseHead(_ bytes: ByteBufferView) throws(Failure) -> HTTPResponseHead {
        var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).makeIterator()
        guard var statusLine = lines.next() else { throw .malformedHead }
        if statusLine.last == 0x0D { statusLine = statusLine.dropLast() }
        // HTTP/1.x SSS reason
        guard statusLine.count >= 12, statusLine.starts(with: "HTTP/1.".utf8) else { throw .malformedHead }
        let start = statusLine.startIndex
        let minor = statusLine[start + 7]
        guard minor == UInt8(ascii: "0") || minor == UInt8(ascii: "1"), statusLine[start + 8] == UInt8(ascii: " ") else {
            throw .malformedHead
        }
        var code = 0
        for offset in 9..<12 {
            let digit = statusLine[start + offset]
            guard digit >= UInt8(ascii: "0") && digit <= UInt8(ascii: "9") else { throw .malformedHead }
            code = code * 10 + Int(digit - UInt8(ascii: "0"))
        }
        var headers = HTTPHeaders()
        while var line = lines.next() {
            if line.last == 0x0D { line = line.dropLast() }
            if line.isEmpty { continue }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex else { throw .malformedHead }
            let name = String(decoding: line[line.startIndex..<colon], as: UTF8.self)
            let value = String(decoding: line[line.index(after: colon)...], as: UTF8.self).trimmingWhitespace()
            headers.add(name: name, value: value)
        }
        return HTTPResponseHead(version: .init(major: 1, minor: minor == UInt8(ascii: "1") ? 1 : 0),
                                status: HTTPResponseStatus(statusCode: code), headers: headers)
    }

    /// The request line, `host`, `content-length` and `headers` (any `host` or `content-length` among them
    /// replaced), then the blank line.
    static func frameHead(_ request: UpstreamRequest, allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 256)
        buffer.writeString(request.method.rawValue)
        buffer.writeStaticString(" ")
        buffer.writeString(request.target)
        buffer.writeStaticString(" HTTP/1.1\r\nhost: ")
        buffer.writeString(request.endpoint.hostHeader)
        buffer.writeStaticString("\r\ncontent-length: ")
        buffer.writeString(String(request.body.readableBytes))
        buffer.writeStaticString("\r\n")
        for (name, value) in request.headers {
            let lowered = name.lowercased()
            if lowered == "host" || lowered == "content-length" { continue }
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
        return buffer
    }
}
