import NIOCore
import NIOEmbedded
import HTTPEdge
import Testing

/// Writes made through a `TickFlusher` reach their sockets together, once the loop's current batch of tasks has run.
@Suite struct TickFlusherTests {
    @Test func writesAreHeldUntilTheBatchHasRunThenFlushedTogether() throws {
        let loop = EmbeddedEventLoop()
        let first = EmbeddedChannel(loop: loop)
        let second = EmbeddedChannel(loop: loop)
        try first.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try second.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        let flusher = TickFlusher(loop: loop)

        flusher.write(ByteBuffer(string: "a1"), to: first)
        flusher.write(ByteBuffer(string: "b1"), to: second)
        flusher.write(ByteBuffer(string: "a2"), to: first)
        // Written, not flushed: nothing has reached either socket yet.
        #expect(try first.readOutbound(as: ByteBuffer.self) == nil)
        #expect(try second.readOutbound(as: ByteBuffer.self) == nil)

        loop.run()
        #expect(try first.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "a1"))
        #expect(try first.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "a2"))
        #expect(try second.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "b1"))

        // The next batch schedules its own flush.
        flusher.write(ByteBuffer(string: "a3"), to: first)
        #expect(try first.readOutbound(as: ByteBuffer.self) == nil)
        loop.run()
        #expect(try first.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "a3"))
        _ = try first.finish()
        _ = try second.finish()
    }

    @Test func aChannelOfAnotherLoopIsWrittenAndFlushedAtOnce() throws {
        let loop = EmbeddedEventLoop()
        let other = EmbeddedChannel(loop: EmbeddedEventLoop())
        try other.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        TickFlusher(loop: loop).write(ByteBuffer(string: "now"), to: other)
        #expect(try other.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "now"))
        _ = try other.finish()
    }
}
