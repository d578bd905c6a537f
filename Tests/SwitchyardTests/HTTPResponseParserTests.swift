import NIOCore
import NIOHTTP1
import HTTPEdge
@testable import Providers
import SwitchyardCore
import Testing

/// The upstream client's own HTTP/1.1 response parser, fed whole and split at every byte boundary.
@Suite struct HTTPResponseParserTests {
    /// The parts as text: `head 200 [name: value, ...]`, each body slice's bytes joined, `end`.
    static func parse(_ chunks: [String], finish: Bool = false) throws -> [String] {
        var parser = HTTPResponseParser()
        var parts: [String] = []
        var pending = ByteBuffer()
        func emit(_ part: HTTPClientResponsePart) {
            switch part {
            case .head(let head):
                parts.append("head \(head.status.code) \(head.version.minor) " + head.headers.map { "\($0.name)=\($0.value)" }.joined(separator: ","))
            case .body(let buffer):
                // Consecutive body slices are joined: how the bytes were split is not part of the answer.
                if let last = parts.last, last.hasPrefix("body ") {
                    parts[parts.count - 1] = last + String(buffer: buffer)
                } else {
                    parts.append("body " + String(buffer: buffer))
                }
            case .end: parts.append("end")
            }
        }
        for chunk in chunks {
            pending.writeString(chunk)
            // One answer per call: the client looks at what follows an answer before parsing on.
            while try parser.parse(&pending, emit: emit), pending.readableBytes > 0 {}
        }
        if finish { parser.finish(emit: emit) }
        return parts
    }

    /// Every way of cutting `text` in two gives the same parts as the whole.
    static func expectSplitsAgree(_ text: String, finish: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String] {
        let whole = try parse([text], finish: finish)
        let bytes = Array(text.utf8)
        for cut in 1..<bytes.count {
            let first = String(decoding: bytes[..<cut], as: UTF8.self), second = String(decoding: bytes[cut...], as: UTF8.self)
            let split = try parse([first, second], finish: finish)
            #expect(split == whole, "cut at \(cut)", sourceLocation: sourceLocation)
        }
        // And one byte at a time.
        #expect(try parse(bytes.map { String(decoding: [$0], as: UTF8.self) }, finish: finish) == whole, sourceLocation: sourceLocation)
        return whole
    }

    @Test func contentLengthBodies() throws {
        let parts = try Self.expectSplitsAgree("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":\"bc\"}\n")
        #expect(parts == ["head 200 1 Content-Type=application/json,Content-Length=11", "body {\"a\":\"bc\"}\n", "end"])
    }

    @Test func chunkedBodiesWithExtensionsAndTrailers() throws {
        let text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\nA \r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"
        let parts = try Self.expectSplitsAgree(text)
        #expect(parts == ["head 200 1 Transfer-Encoding=chunked", "body hello world0123456789", "end"])
        #expect(try Self.parse(["HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: Chunked\r\n\r\n0\r\n\r\n"]) == ["head 200 1 TRANSFER-ENCODING=Chunked", "end"])
    }

    @Test func keepAliveAnswersFollowEachOther() throws {
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n"
            + "HTTP/1.0 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 0\r\n\r\n"
        let parts = try Self.expectSplitsAgree(text)
        #expect(parts == ["head 200 1 Content-Length=2", "body ok", "end", "head 204 1 ", "end",
                          "head 429 0 retry-after=3,content-length=0", "end"])
    }

    @Test func aBodyWithoutLengthRunsUntilTheConnectionCloses() throws {
        let text = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nevent: a\n\n"
        #expect(try Self.parse([text]) == ["head 200 1 Connection=close", "body event: a\n\n"])
        #expect(try Self.expectSplitsAgree(text, finish: true) == ["head 200 1 Connection=close", "body event: a\n\n", "end"])
    }

    @Test func malformedAnswersAreRefused() throws {
        for (text, failure) in [
            ("HTTP/2 200 OK\r\n\r\n", HTTPResponseParser.Failure.malformedHead),
            ("HTTP/1.1 2x0 OK\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", .malformedChunk),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", .malformedChunk),
            ("HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: HTTPResponseParser.maximumHeadBytes), .headTooLarge),
            // As strict as the edge's request parser.
            ("HTTP/1.1 200 OK\nContent-Length: 0\n\n\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\nX: y\r\n\r\n", .malformedHead),
            ("HTTP/1.1 600 Odd\r\n\r\n", .malformedHead),
            ("HTTP/1.1 099 Odd\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200OK\r\n\r\n", .malformedHead),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", .malformedHead),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", .malformedHead),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200 OK\r\nX: a\u{01}b\r\n\r\n", .malformedHead),
            ("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", .malformedHead),
        ] {
            #expect(throws: failure, "\(text.prefix(40))") { try Self.parse([text]) }
        }
    }

    @Test func parsingStopsAtTheEndOfOneAnswer() throws {
        var parser = HTTPResponseParser()
        var buffer = ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        var parts = 0
        #expect(try parser.parse(&buffer) { _ in parts += 1 })
        #expect(parts == 3)
        // The second answer is left for the connection's owner to judge (no request asked for it).
        #expect(String(buffer: buffer).hasPrefix("HTTP/1.1 200 OK"))
        // And parses it on the next call.
        #expect(try parser.parse(&buffer) { _ in parts += 1 })
        #expect(parts == 5 && buffer.readableBytes == 0)
    }

    @Test func requestsAreFramedInOneBuffer() throws {
        let endpoint = try #require(UpstreamEndpoint(baseURL: "http://127.0.0.1:8000/prefix"))
        var headers = HTTPHeaders()
        headers.add(name: "authorization", value: "Bearer upstream-key")
        headers.add(name: "Host", value: "ignored")
        headers.add(name: "content-length", value: "999")
        let request = UpstreamRequest(endpoint: endpoint, target: "/prefix/v1/chat/completions", headers: headers,
                                      body: ByteBuffer(string: "{}"))
        let framed = UpstreamFraming.frame(request, keepAlive: true, allocator: ByteBufferAllocator())
        #expect(framed.bodyIncluded)
        #expect(String(buffer: framed.buffer) == "POST /prefix/v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n"
            + "content-length: 2\r\nauthorization: Bearer upstream-key\r\n\r\n{}")
        // A large body follows the head as its own buffer instead of being copied.
        let large = UpstreamRequest(endpoint: endpoint, target: "/v1/chat/completions", headers: HTTPHeaders(),
                                    body: ByteBuffer(repeating: UInt8(ascii: "a"), count: UpstreamFraming.inlineBodyBytes + 1))
        let split = UpstreamFraming.frame(large, keepAlive: true, allocator: ByteBufferAllocator())
        #expect(!split.bodyIncluded)
        #expect(String(buffer: split.buffer).hasSuffix("content-length: \(UpstreamFraming.inlineBodyBytes + 1)\r\n\r\n"))
        // Without keep-alive: `connection: close`, in place of any configured `connection` header.
        var closing = request
        closing.headers.add(name: "Connection", value: "keep-alive")
        let closed = UpstreamFraming.frame(closing, keepAlive: false, allocator: ByteBufferAllocator())
        #expect(String(buffer: closed.buffer) == "POST /prefix/v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n"
            + "content-length: 2\r\nconnection: close\r\nauthorization: Bearer upstream-key\r\n\r\n{}")
    }

    @Test func keepAliveFollowsTheVersionAndTheConnectionHeader() {
        func head(_ minor: Int, _ connection: [String]) -> HTTPResponseHead {
            var headers = HTTPHeaders([("content-length", "0")])
            for value in connection { headers.add(name: "Connection", value: value) }
            return HTTPResponseHead(version: .init(major: 1, minor: minor), status: .ok, headers: headers)
        }
        for (minor, connection, expected) in [
            (1, [], true), (1, ["keep-alive"], true), (1, ["close"], false), (1, ["Upgrade, CLOSE"], false),
            (1, ["keep-alive", "close"], false), (0, [], false), (0, ["Keep-Alive"], true), (0, ["keep-alive, close"], false),
        ] as [(Int, [String], Bool)] {
            let head = head(minor, connection)
            #expect(HTTPResponseParser.isKeepAlive(head) == expected, "HTTP/1.\(minor) \(connection)")
            // The same answer as NIO's own reading of the headers.
            #expect(HTTPResponseParser.isKeepAlive(head) == head.isKeepAlive, "HTTP/1.\(minor) \(connection)")
        }
    }
}
