import HTTPEdge
import NIOCore
import NIOHTTP1
import SwitchyardCore

/// The request framing of the upstream client: the client sends one request at a time, only `POST`/`GET`, framed
/// into one buffer (`HTTPResponseParser`, in `HTTPEdge`, reads the answers).
enum UpstreamFraming {
    /// Bodies up to this size are copied behind the head, so the request leaves in one `write` (not a `writev` of
    /// two buffers); larger ones follow the head as their own buffer.
    static let inlineBodyBytes = 64 << 10

    /// The request line, `host`, `content-length` and `headers` (any `host` or `content-length` among them
    /// replaced; with `keepAlive` false, `connection: close` in place of any `connection`), the blank line, and the
    /// body when that is at most `inlineBodyBytes` long (`bodyIncluded`).
    static func frame(_ request: UpstreamRequest, keepAlive: Bool, allocator: ByteBufferAllocator)
        -> (buffer: ByteBuffer, bodyIncluded: Bool)
    {
        let inline = request.body.readableBytes <= inlineBodyBytes
        var buffer = allocator.buffer(capacity: 256 + (inline ? request.body.readableBytes : 0))
        buffer.writeString(request.method.rawValue)
        buffer.writeStaticString(" ")
        buffer.writeString(request.target)
        buffer.writeStaticString(" HTTP/1.1\r\nhost: ")
        buffer.writeString(request.endpoint.hostHeader)
        buffer.writeStaticString("\r\ncontent-length: ")
        buffer.writeString(String(request.body.readableBytes))
        buffer.writeStaticString(keepAlive ? "\r\n" : "\r\nconnection: close\r\n")
        for (name, value) in request.headers {
            if HeaderTokens.equals(name.utf8, "host") || HeaderTokens.equals(name.utf8, "content-length")
                || (!keepAlive && HeaderTokens.equals(name.utf8, "connection")) { continue }
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
