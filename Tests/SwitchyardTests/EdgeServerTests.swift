import Foundation
import HTTPEdge
import HTTPTypes
import Logging
import NIOCore
import NIOPosix
import SwitchyardCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The gateway's HTTP/1.1 edge, driven over a raw socket so that framing, ordering and connection handling are seen
/// byte for byte.
@Suite struct EdgeServerTests {
    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        try await withEdge { port in
            let connection = try RawConnection(port: port)
            try connection.send("GET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
            let text = try await connection.receive(until: { $0.components(separatedBy: "HTTP/1.1 200").count == 3 && $0.hasSuffix("fast") })
            let slow = try #require(text.range(of: "slow"))
            let fast = try #require(text.range(of: "fast"))
            #expect(slow.lowerBound < fast.lowerBound)
        }
    }

    @Test func expectContinueIsAnsweredBeforeTheBodyIsSent() async throws {
        try await withEdge { port in
            let connection = try RawConnection(port: port)
            try connection.send("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
            let interim = try await connection.receive(until: { $0.contains("\r\n\r\n") })
            #expect(interim.hasPrefix("HTTP/1.1 100 Continue\r\n"))
            try connection.send("hello")
            let answer = try await connection.receive(until: { $0.hasSuffix("hello") })
            #expect(answer.contains("HTTP/1.1 200 OK\r\n"))
            #expect(answer.contains("content-length: 5\r\n"))
        }
    }

    @Test func aMalformedRequestGets400AndTheConnectionCloses() async throws {
        try await withEdge { port in
            let connection = try RawConnection(port: port)
            try connection.send("NOT-HTTP\r\n\r\n")
            let text = try await connection.receiveUntilClosed()
            #expect(text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        }
    }

    @Test func connectionCloseAndHTTP10AreHonoured() async throws {
        try await withEdge { port in
            let closing = try RawConnection(port: port)
            try closing.send("GET /fast HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            let first = try await closing.receiveUntilClosed()
            #expect(first.contains("connection: close\r\n") && first.hasSuffix("fast"))

            let old = try RawConnection(port: port)
            try old.send("GET /fast HTTP/1.0\r\n\r\n")
            let second = try await old.receiveUntilClosed()
            #expect(second.hasPrefix("HTTP/1.1 200 OK\r\n") && second.hasSuffix("fast"))

            let kept = try RawConnection(port: port)
            for _ in 0..<3 {
                try kept.send("GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
                let text = try await kept.receive(until: { $0.hasSuffix("fast") })
                #expect(!text.contains("connection: close"))
            }
        }
    }

    @Test func streamedBodiesAreChunkedAndTerminated() async throws {
        try await withEdge { port in
            let connection = try RawConnection(port: port)
            try connection.send("GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
            let text = try await connection.receive(until: { $0.hasSuffix("0\r\n\r\n") })
            #expect(text.contains("transfer-encoding: chunked\r\n"))
            #expect(text.hasSuffix("\r\n\r\n6\r\npart-0\r\n6\r\npart-1\r\n6\r\npart-2\r\n0\r\n\r\n"))
            // The connection carries another request afterwards.
            try connection.send("GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
            _ = try await connection.receive(until: { $0.hasSuffix("fast") })
        }
    }

    @Test func aBodyOverTheLimitIsFlaggedAndDropped() async throws {
        try await withEdge(maxBodyBytes: 16) { port in
            let connection = try RawConnection(port: port)
            let body = String(repeating: "x", count: 40)
            try connection.send("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 40\r\n\r\n\(body)")
            let text = try await connection.receive(until: { $0.hasSuffix("too large") })
            #expect(text.hasPrefix("HTTP/1.1 413 Content Too Large\r\n") || text.hasPrefix("HTTP/1.1 413 Payload Too Large\r\n"))
            // The dropped body did not desynchronise the connection.
            try connection.send("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nok")
            _ = try await connection.receive(until: { $0.hasSuffix("ok") })
        }
    }

    @Test func aClientThatLeavesCancelsItsRequest() async throws {
        let cancelled = Locked(false)
        try await withEdge(cancelled: cancelled) { port in
            let connection = try RawConnection(port: port)
            try connection.send("GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
            try await Task.sleep(for: .milliseconds(100))
            connection.close()
            for _ in 0..<100 where !cancelled.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(20)) }
            #expect(cancelled.withLock { $0 })
        }
    }

    /// The responder runs on its connection's event loop, and stays there across calls into nonisolated async
    /// functions and a sleep (its task prefers the loop as task executor). Tests do not install NIO as the global
    /// executor, so without that preference the responder would run on Swift's own pool.
    @Test func theResponderRunsOnItsConnectionsEventLoop() async throws {
        try await withEdge { port in
            let connection = try RawConnection(port: port)
            try connection.send("GET /loop HTTP/1.1\r\nhost: x\r\n\r\n")
            let text = try await connection.receive(until: { $0.hasSuffix("same") || $0.hasSuffix("moved") })
            #expect(text.hasSuffix("same"))
        }
    }

    // MARK: Hostile clients

    static let short = EdgeTimeouts(head: .milliseconds(300), idle: .milliseconds(300), bodyMinimumBytesPerSecond: 1000,
                                    write: .milliseconds(300))

    @Test func slowlorisHeadsAreClosedOnTimeWhileOthersAreServed() async throws {
        let timeouts = EdgeTimeouts(head: .seconds(1), idle: .seconds(1), bodyMinimumBytesPerSecond: 1000, write: .seconds(1))
        try await withEdge(timeouts: timeouts) { port in
            let slow = try (0..<50).map { _ in try RawConnection(port: port) }
            for connection in slow { try connection.send("GET / HTTP/1.1\r\nX-Slow: a") }
            // A connection that sends nothing at all is held to the same limit.
            let silent = try RawConnection(port: port)
            let started = ContinuousClock.now
            let normal = try RawConnection(port: port)
            try normal.send("GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
            _ = try await normal.receive(until: { $0.hasSuffix("fast") })
            // Served while the slow connections are still open (their head timeout is 1 s).
            #expect(ContinuousClock.now - started < .milliseconds(900))
            for connection in slow {
                let text = try await connection.receiveUntilClosed()
                #expect(text.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
            }
            #expect(try await silent.receiveUntilClosed().hasPrefix("HTTP/1.1 408"))
            #expect(ContinuousClock.now - started < .seconds(4))
        }
    }

    @Test func aBodySentTooSlowlyIsClosed() async throws {
        try await withEdge(timeouts: Self.short) { port in
            let connection = try RawConnection(port: port)
            try connection.send("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n0123456789")
            let started = ContinuousClock.now
            let text = try await connection.receiveUntilClosed()
            #expect(text.hasPrefix("HTTP/1.1 408 Request Timeout\r\n") && text.contains("too slowly"))
            #expect(ContinuousClock.now - started < .seconds(3))
        }
    }

    @Test func idleKeepAliveConnectionsAreClosed() async throws {
        try await withEdge(timeouts: Self.short) { port in
            let connection = try RawConnection(port: port)
            try connection.send("GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
            let started = ContinuousClock.now
            let text = try await connection.receiveUntilClosed()
            #expect(text.hasSuffix("fast"))
            #expect(ContinuousClock.now - started >= .milliseconds(250))
            #expect(ContinuousClock.now - started < .seconds(3))
        }
    }

    @Test func connectionsPastTheCapAreRefusedCleanly() async throws {
        try await withEdge(maxConnections: 5) { port in
            let held = try (0..<5).map { _ in try RawConnection(port: port) }
            for connection in held { try connection.send("GET /fast HTTP/1.1\r\nhost: x\r\n\r\n") }
            for connection in held { _ = try await connection.receive(until: { $0.hasSuffix("fast") }) }
            let refused = try RawConnection(port: port)
            let text = try await refused.receiveUntilClosed()
            #expect(text.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n") && text.contains("retry-after: 1"))
            // A slot frees when a connection closes.
            held[0].close()
            try await Task.sleep(for: .milliseconds(100))
            let again = try RawConnection(port: port)
            try again.send("GET /fast HTTP/1.1\r\nhost: x\r\n\r\n")
            _ = try await again.receive(until: { $0.hasSuffix("fast") })
        }
    }

    @Test func aClientThatStopsReadingIsClosedAndItsWorkCancelled() async throws {
        let cancelled = Locked(false)
        try await withEdge(cancelled: cancelled, timeouts: Self.short) { port in
            let connection = try RawConnection(port: port)
            try connection.send("GET /forever HTTP/1.1\r\nhost: x\r\n\r\n")
            // Never read: the socket buffers fill, the writes stall, the write timeout closes the connection.
            for _ in 0..<200 where !cancelled.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(20)) }
            #expect(cancelled.withLock { $0 })
        }
    }

    @Test func pipelinedRequestsPastTheQueueWaitInsteadOfClosing() async throws {
        try await withEdge { port in
            let connection = try RawConnection(port: port)
            try connection.send(String(repeating: "GET /fast HTTP/1.1\r\nhost: x\r\n\r\n", count: 60))
            let text = try await connection.receive(until: { $0.components(separatedBy: "fast").count == 61 })
            #expect(text.components(separatedBy: "HTTP/1.1 200 OK").count == 61)
        }
    }

    @Test func expectContinueOnlyWhenTheBodyFitsAndNothingElseIsBeingWritten() async throws {
        try await withEdge(maxBodyBytes: 16) { port in
            let large = try RawConnection(port: port)
            try large.send("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\nexpect: 100-continue\r\n\r\n")
            let refused = try await large.receiveUntilClosed()
            #expect(refused.hasPrefix("HTTP/1.1 413"))
            #expect(!refused.contains("100 Continue"))

            // Behind a slow answer, the 100 waits until that answer is written.
            let pipelined = try RawConnection(port: port)
            try pipelined.send("GET /slow HTTP/1.1\r\nhost: x\r\n\r\n"
                               + "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
            let first = try await pipelined.receive(until: { $0.contains("100 Continue\r\n\r\n") })
            let slow = try #require(first.range(of: "slow"))
            let interim = try #require(first.range(of: "HTTP/1.1 100 Continue"))
            #expect(slow.upperBound <= interim.lowerBound)
            try pipelined.send("ok")
            _ = try await pipelined.receive(until: { $0.hasSuffix("ok") })
        }
    }

    @Test func http10NeverGetsAChunkedAnswer() async throws {
        try await withEdge { port in
            let connection = try RawConnection(port: port)
            try connection.send("GET /stream HTTP/1.0\r\n\r\n")
            let text = try await connection.receiveUntilClosed()
            #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"))
            #expect(!text.lowercased().contains("transfer-encoding"))
            #expect(text.hasSuffix("\r\n\r\npart-0part-1part-2"))

            let chunked = try RawConnection(port: port)
            try chunked.send("POST /echo HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
            #expect(try await chunked.receiveUntilClosed().hasPrefix("HTTP/1.1 400"))
        }
    }

    @Test func bareLineFeedsGetA400NotSilence() async throws {
        try await withEdge { port in
            let connection = try RawConnection(port: port)
            try connection.send("GET /fast HTTP/1.1\nhost: x\n\n")
            #expect(try await connection.receiveUntilClosed().hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        }
    }

    @Test func aChunkSizePastTheLimitIsRefusedAtOnce() async throws {
        try await withEdge(maxBodyBytes: 1000) { port in
            let connection = try RawConnection(port: port)
            try connection.send("POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nFFFFFFFF\r\n")
            #expect(try await connection.receiveUntilClosed().hasPrefix("HTTP/1.1 413"))
        }
    }

    @Test func bodiesPastTheBudgetWaitThenGet503() async throws {
        // 1,600 bytes over two loops: 800 each, one 800-byte body per loop at a time.
        try await withEdge(maxBodyBytes: 1000, bodyBudgetBytes: 1600) { port in
            let holders = try (0..<4).map { _ in try RawConnection(port: port) }
            for connection in holders {
                try connection.send("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 800\r\n\r\n" + String(repeating: "a", count: 100))
            }
            try await Task.sleep(for: .milliseconds(600))
            var refused = 0, answered = 0
            for connection in holders {
                // A refused connection was answered 503 and closed; an admitted one gets the rest of its body now.
                try? connection.send(String(repeating: "a", count: 700))
                let text = try await connection.receive(until: { $0.hasPrefix("HTTP/1.1 503") ? $0.contains("}") : $0.hasSuffix(String(repeating: "a", count: 800)) })
                if text.hasPrefix("HTTP/1.1 503") {
                    #expect(text.contains("retry-after: 1"))
                    refused += 1
                } else {
                    #expect(text.hasPrefix("HTTP/1.1 200"))
                    answered += 1
                }
            }
            // One body per loop fits; the rest waited 300 ms and were refused.
            #expect(refused >= 1 && answered >= 1 && refused + answered == 4, "\(refused) refused, \(answered) answered")
            // Answered bodies gave their budget back.
            let fresh = try RawConnection(port: port)
            try fresh.send("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 800\r\n\r\n" + String(repeating: "b", count: 100))
            try await Task.sleep(for: .milliseconds(50))
            try fresh.send(String(repeating: "b", count: 700))
            _ = try await fresh.receive(until: { $0.hasSuffix(String(repeating: "b", count: 800)) })
        }
    }

    // MARK: Harness

    static func nonisolatedStep() async {
        await Task.yield()
    }

    func withEdge(maxBodyBytes: Int = 1 << 20, cancelled: Locked<Bool>? = nil, timeouts: EdgeTimeouts = EdgeTimeouts(),
                  maxConnections: Int = 10_000, bodyBudgetBytes: Int = 256 << 20, _ body: (Int) async throws -> Void) async throws {
        let port = ReadySignal<Int>()
        let server = EdgeServer(configuration: .init(host: "127.0.0.1", port: 0, maxBodyBytes: maxBodyBytes, timeouts: timeouts,
                                                     maxConnections: maxConnections, bodyBudgetBytes: bodyBudgetBytes,
                                                     bodyBudgetWait: .milliseconds(300)),
                                logger: Logger(label: "edge-test"), onListening: { port.set($0) }) { request in
            switch request.path {
            case "/slow":
                try? await Task.sleep(for: .milliseconds(80))
                return EdgeResponse(status: .ok, body: .buffer(ByteBuffer(string: "slow")))
            case "/fast":
                return EdgeResponse(status: .ok, body: .buffer(ByteBuffer(string: "fast")))
            case "/loop":
                let before = MultiThreadedEventLoopGroup.currentEventLoop
                await Self.nonisolatedStep()
                try? await Task.sleep(for: .milliseconds(5))
                let after = MultiThreadedEventLoopGroup.currentEventLoop
                let same = before != nil && before === after
                return EdgeResponse(status: .ok, body: .buffer(ByteBuffer(string: same ? "same" : "moved")))
            case "/echo":
                if request.bodyExceededLimit {
                    return EdgeResponse(status: .contentTooLarge, body: .buffer(ByteBuffer(string: "too large")))
                }
                return EdgeResponse(status: .ok, body: .buffer(request.body))
            case "/stream":
                return EdgeResponse(status: .ok, headers: [.contentType: "text/plain"], body: .stream { writer in
                    for index in 0..<3 { try await writer.write(ByteBuffer(string: "part-\(index)")) }
                })
            case "/forever":
                // As fast as the client reads, until the write fails.
                return EdgeResponse(status: .ok, headers: [.contentType: "text/plain"], body: .stream { writer in
                    let chunk = ByteBuffer(repeating: UInt8(ascii: "x"), count: 64 << 10)
                    do {
                        while true { try await writer.write(chunk) }
                    } catch {
                        cancelled?.withLock { $0 = true }
                        throw error
                    }
                })
            default:
                do {
                    try await Task.sleep(for: .seconds(30))
                } catch {
                    cancelled?.withLock { $0 = true }
                }
                return EdgeResponse(status: .ok)
            }
        }
        let task = Task { try await server.run() }
        defer { task.cancel() }
        try await body(await port.wait())
    }
}

/// A blocking TCP connection with a receive timeout, for talking HTTP byte by byte. Reads block a thread of NIO's
/// blocking pool, never the cooperative pool the server's tasks need. Used by one test at a time.
final class RawConnection: @unchecked Sendable {
    let descriptor: Int32

    init(port: Int) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { throw RawConnectionError.failed("connect") }
    }

    deinit { close() }

    private var closed = false

    /// Closes once: closing a descriptor twice could close another socket that reused its number.
    func close() {
        guard !closed else { return }
        closed = true
        shutdown(descriptor, Int32(SHUT_RDWR))
        _ = Glibc.close(descriptor)
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        let sent = bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, 0) }
        guard sent == bytes.count else { throw RawConnectionError.failed("send") }
    }

    private var received: [UInt8] = []

    /// Reads until `done` holds for everything received since the last call; throws on timeout or close.
    func receive(until done: @escaping @Sendable (String) -> Bool) async throws -> String {
        try await NIOThreadPool.singleton.runIfActive { try self.receiveBlocking(until: done) }
    }

    /// Reads until the server closes the connection.
    func receiveUntilClosed() async throws -> String {
        try await NIOThreadPool.singleton.runIfActive { try self.receiveUntilClosedBlocking() }
    }

    private func receiveBlocking(until done: (String) -> Bool) throws -> String {
        while true {
            let text = String(decoding: received, as: UTF8.self)
            if done(text) {
                received.removeAll()
                return text
            }
            guard try readSome() else { throw RawConnectionError.failed("closed early after: \(text)") }
        }
    }

    private func receiveUntilClosedBlocking() throws -> String {
        while try readSome() {}
        defer { received.removeAll() }
        return String(decoding: received, as: UTF8.self)
    }

    private func readSome() throws -> Bool {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        if count < 0 { throw RawConnectionError.failed("timed out") }
        received.append(contentsOf: buffer[0..<count])
        return count > 0
    }
}

enum RawConnectionError: Error {
    case failed(String)
}
