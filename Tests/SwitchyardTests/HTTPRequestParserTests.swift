@testable import HTTPEdge
import NIOCore
import NIOHTTP1
import Testing

/// The edge's own HTTP/1.1 request parser, fed whole and split at every byte boundary, and its refusals of requests
/// that could be read more than one way.
@Suite struct HTTPRequestParserTests {
    /// The parts as text (`head METHOD URI 1.x keep-alive|close name=value,...`, the body's bytes joined, `end`),
    /// or the failure.
    static func parse(_ chunks: [String]) throws(HTTPRequestParser.Failure) -> [String] {
        var parser = HTTPRequestParser()
        var parts: [String] = []
        var pending = ByteBuffer()
        func emit(_ part: HTTPRequestParser.Part) {
            switch part {
            case .head(let head, let keepAlive):
                parts.append("head \(head.method.rawValue) \(head.uri) 1.\(head.version.minor) \(keepAlive ? "keep-alive" : "close") "
                    + head.headers.map { "\($0.name)=\($0.value)" }.joined(separator: ","))
            case .body(let buffer):
                if let last = parts.last, last.hasPrefix("body ") {
                    parts[parts.count - 1] = last + String(buffer: buffer)
                } else {
                    parts.append("body " + String(buffer: buffer))
                }
            case .end:
                parts.append("end")
            }
        }
        for chunk in chunks {
            pending.writeString(chunk)
            // One request per call: the edge looks at its queue before parsing on.
            while try parser.parse(&pending, emit: emit), pending.readableBytes > 0 {}
            pending.discardReadBytes()
        }
        return parts
    }

    /// The same parts whether the bytes arrive at once or split in two at any offset.
    static func expectSameAtEverySplit(_ text: String, _ expected: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(try parse([text]) == expected, sourceLocation: sourceLocation)
        let bytes = Array(text.utf8)
        for cut in 1..<bytes.count {
            let parts = try parse([String(decoding: bytes[..<cut], as: UTF8.self), String(decoding: bytes[cut...], as: UTF8.self)])
            #expect(parts == expected, "split at \(cut)", sourceLocation: sourceLocation)
        }
    }

    @Test func requestsWithAndWithoutBodies() throws {
        try Self.expectSameAtEverySplit("GET /healthz?x=1 HTTP/1.1\r\nHost: gw\r\n\r\n",
                                        ["head GET /healthz?x=1 1.1 keep-alive Host=gw", "end"])
        try Self.expectSameAtEverySplit(
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Type:  application/json \r\nContent-Length: 7\r\n\r\n{\"a\":1}",
            ["head POST /v1/chat/completions 1.1 keep-alive Content-Type=application/json,Content-Length=7", "body {\"a\":1}", "end"])
        // An empty line before the request line is skipped; a repeated Content-Length with one value is accepted.
        try Self.expectSameAtEverySplit("\r\nPOST /e HTTP/1.1\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok",
                                        ["head POST /e 1.1 keep-alive content-length=2, 2,content-length=2", "body ok", "end"])
    }

    @Test func chunkedBodiesWithExtensionsAndTrailers() throws {
        try Self.expectSameAtEverySplit(
            "POST /e HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n4;name=value\r\nwiki\r\n5 \r\npedia\r\nA\r\n in chunks\r\n0\r\nx-trailer: t\r\n\r\n",
            ["head POST /e 1.1 keep-alive Transfer-Encoding=Chunked", "body wikipedia in chunks", "end"])
    }

    @Test func pipelinedRequestsAreReadInOrder() throws {
        let parts = try Self.parse(["GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\ncontent-length: 1\r\n\r\nxGET /c HTTP/1.1\r\n\r\n"])
        #expect(parts == ["head GET /a 1.1 keep-alive ", "end", "head POST /b 1.1 keep-alive content-length=1", "body x", "end",
                          "head GET /c 1.1 keep-alive ", "end"])
    }

    @Test func keepAliveFollowsTheVersionAndTheConnectionHeader() throws {
        func keepAlive(_ request: String) throws -> Bool {
            try #require(try Self.parse([request]).first).contains(" keep-alive ")
        }
        #expect(try keepAlive("GET / HTTP/1.1\r\n\r\n"))
        #expect(try !keepAlive("GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n"))
        #expect(try !keepAlive("GET / HTTP/1.0\r\n\r\n"))
        #expect(try keepAlive("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"))
    }

    @Test func ambiguousOrMalformedRequestsAreRefused() {
        let cases: [(String, HTTPRequestParser.Failure)] = [
            ("NOT-HTTP\r\n\r\n", .malformedRequestLine),
            ("GET /\r\n\r\n", .malformedRequestLine),
            ("GET  / HTTP/1.1\r\n\r\n", .malformedRequestLine),
            ("G(T / HTTP/1.1\r\n\r\n", .malformedRequestLine),
            ("GET / HTTP/1.1 \r\n\r\n", .malformedRequestLine),
            ("GET / HTTP/2.0\r\n\r\n", .unsupportedVersion),
            ("GET / HTTP/1.2\r\n\r\n", .unsupportedVersion),
            // A bare line feed is refused as soon as it arrives, wherever it is (the head would never end).
            ("GET / HTTP/1.1\nHost: x\r\n\r\n", .malformedHeader),
            ("GET / HTTP/1.1\nHost: x\n", .malformedHeader),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", .transferEncodingOnHTTP10),
            ("GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", .malformedHeader),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", .malformedHeader),
            ("GET / HTTP/1.1\r\n: x\r\n\r\n", .malformedHeader),
            ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", .malformedHeader),
            ("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", .malformedHeader),
            ("GET / HTTP/1.1\r\nA: b\u{0}c\r\n\r\n", .malformedHeader),
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", .conflictingFraming),
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", .badContentLength),
            ("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", .badContentLength),
            ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", .badContentLength),
            ("POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", .badContentLength),
            ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", .badContentLength),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", .unsupportedTransferEncoding),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", .unsupportedTransferEncoding),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", .malformedChunk),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", .malformedChunk),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", .malformedChunk),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n", .malformedChunk),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n", .malformedChunk),
            ("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: HTTPRequestParser.maximumHeadBytes) + "\r\n\r\n", .headTooLarge),
            ("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: HTTPRequestParser.maximumHeadBytes), .headTooLarge),
        ]
        for (text, failure) in cases {
            #expect(throws: failure, "\(text.prefix(60).debugDescription)") { try Self.parse([text]) }
        }
    }

    @Test func aChunkSizePastTheBodyLimitIsRefusedAtOnce() {
        var parser = HTTPRequestParser(maximumChunkedBodyBytes: 1000)
        var buffer = ByteBuffer(string: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n")
        #expect(throws: Never.self) { try parser.parse(&buffer) { _ in } }
        buffer.writeString(String(repeating: "a", count: 0x200) + "\r\n" + "300\r\n")
        #expect(throws: HTTPRequestParser.Failure.bodyTooLarge) { try parser.parse(&buffer) { _ in } }
    }

    @Test func aHeadSentAByteAtATimeIsSearchedOnce() throws {
        // Resumed, not rescanned: a 60 KB head a byte at a time is read in well under a second even unoptimised.
        var parser = HTTPRequestParser()
        var buffer = ByteBuffer()
        let head = "GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 60_000) + "\r\n\r\n"
        var ended = false
        let started = ContinuousClock.now
        for byte in head.utf8 {
            buffer.writeInteger(byte)
            if try parser.parse(&buffer, emit: { _ in }) { ended = true }
        }
        #expect(ended)
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    @Test func arbitraryBytesNeverCrashTheParser() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("GETPOST /HTTP1.0:\r\n \t;,chunkedcontent-length0123456789abcdef\u{0}\u{7F}".utf8)
        for _ in 0..<2000 {
            let count = Int.random(in: 0..<120, using: &generator)
            let bytes = (0..<count).map { _ in alphabet.randomElement(using: &generator)! }
            var parser = HTTPRequestParser()
            var buffer = ByteBuffer(bytes: bytes)
            _ = try? parser.parse(&buffer) { _ in }
        }
    }
}
