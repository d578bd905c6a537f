import NIOCore
import ServerSentEvents
import Testing

@Suite struct SSEDecoderTests {
    static let fixture = """
        : keep-alive comment\r
        event: message_start\r
        data: {"a":1}\r
        \r
        data: line one
        data: line two

        id: 7
        data:no-space

        retry: 100
        unknown: field
        data: [DONE]


        """

    static let expected: [ServerSentEvent] = [
        ServerSentEvent(event: "message_start", data: ByteBuffer(string: "{\"a\":1}")),
        ServerSentEvent(data: ByteBuffer(string: "line one\nline two")),
        ServerSentEvent(data: ByteBuffer(string: "no-space"), id: "7"),
        ServerSentEvent(data: ByteBuffer(string: "[DONE]")),
    ]

    func decode(_ parts: [String]) throws -> [ServerSentEvent] {
        var decoder = SSEDecoder()
        var events: [ServerSentEvent] = []
        for part in parts { events += try decoder.feed(ByteBuffer(string: part)) }
        return events
    }

    @Test func decodesWholeFixture() throws {
        #expect(try decode([Self.fixture]) == Self.expected)
    }

    @Test func decodesFixtureSplitAtEveryByteBoundary() throws {
        let bytes = Array(Self.fixture.utf8)
        for split in 1..<bytes.count {
            var decoder = SSEDecoder()
            var events = try decoder.feed(ByteBuffer(bytes: bytes[..<split]))
            events += try decoder.feed(ByteBuffer(bytes: bytes[split...]))
            #expect(events == Self.expected, "split at byte \(split)")
        }
    }

    @Test func decodesFixtureOneByteAtATime() throws {
        #expect(try decode(Self.fixture.map { String($0) }) == Self.expected)
    }

    @Test func bareCarriageReturnsEndLines() throws {
        #expect(try decode(["data: x\r\rdata: y\r\r"]) == [
            ServerSentEvent(data: ByteBuffer(string: "x")), ServerSentEvent(data: ByteBuffer(string: "y")),
        ])
    }

    @Test func anEventWithoutItsBlankLineIsNotEmitted() throws {
        var decoder = SSEDecoder()
        #expect(try decoder.feed(ByteBuffer(string: "data: partial\n")).isEmpty)
        decoder.finish()
        #expect(try decoder.feed(ByteBuffer(string: "\n")).isEmpty)
    }

    @Test func commentsAloneProduceNoEvents() throws {
        #expect(try decode([": ping\n\n: ping\n\n"]).isEmpty)
    }

    @Test func oversizedEventIsRefused() throws {
        var decoder = SSEDecoder(maximumEventSize: 16)
        #expect(throws: SSEDecodingError.eventTooLarge(limit: 16)) {
            _ = try decoder.feed(ByteBuffer(string: "data: " + String(repeating: "x", count: 32) + "\n\n"))
        }
    }

    @Test func encoderRoundTripsMultiLineData() throws {
        let event = ServerSentEvent(event: "e", data: ByteBuffer(string: "a\nb"))
        var buffer = ByteBuffer()
        event.write(into: &buffer)
        #expect(String(buffer: buffer) == "event: e\ndata: a\ndata: b\n\n")
        var decoder = SSEDecoder()
        #expect(try decoder.feed(buffer) == [event])
    }
}
