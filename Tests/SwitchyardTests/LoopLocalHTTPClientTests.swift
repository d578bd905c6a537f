import NIOCore
import NIOHTTP1
import NIOPosix
import Providers
import SwitchyardCore
import Testing

/// The loop-local upstream client against a small NIO HTTP/1.1 server whose paths misbehave on purpose.
@Suite struct LoopLocalHTTPClientTests {
    @Test func endpointsParse() throws {
        let plain = try #require(UpstreamEndpoint(baseURL: "http://10.0.0.5:8000/prefix/"))
        #expect(plain.tls == false && plain.host == "10.0.0.5" && plain.port == 8000 && plain.basePath == "/prefix")
        #expect(plain.hostHeader == "10.0.0.5:8000")
        let tls = try #require(UpstreamEndpoint(baseURL: "https://api.openai.com"))
        #expect(tls.tls && tls.port == 443 && tls.basePath == "" && tls.hostHeader == "api.openai.com")
        let v6 = try #require(UpstreamEndpoint(baseURL: "http://[::1]:9000"))
        #expect(v6.host == "::1" && v6.port == 9000 && v6.hostHeader == "[::1]:9000")
        for bad in ["ftp://x", "http://", "http://host:port", "http://host:70000", "http://[::1"] {
            #expect(UpstreamEndpoint(baseURL: bad) == nil, "\(bad)")
        }
    }

    @Test func keepAliveConnectionsAreReused() async throws {
        try await withServer { server, client in
            for _ in 0..<20 {
                let response = try await client.execute(server.request("/ok"), deadline: .now() + .seconds(5),
                                                        streaming: false, maximumBodyBytes: 1 << 20)
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "hello")
            }
            #expect(server.accepted == 1)
        }
    }

    @Test func connectionsTheServerClosesAreReplaced() async throws {
        try await withServer { server, client in
            // `connection: close` answers, then a connection the server drops while it idles in the pool.
            for path in ["/close", "/close", "/ok-then-drop", "/ok", "/ok"] {
                let response = try await client.execute(server.request(path), deadline: .now() + .seconds(5),
                                                        streaming: false, maximumBodyBytes: 1 << 20)
                #expect(response.status == .ok, "\(path)")
                if path == "/ok-then-drop" { try await Task.sleep(for: .milliseconds(150)) }
            }
            #expect(server.accepted == 4)
        }
    }

    @Test func theDeadlineClosesAStalledCall() async throws {
        try await withServer { server, client in
            let started = ContinuousClock.now
            await #expect(throws: UpstreamTransportError.deadlineExceeded) {
                _ = try await client.execute(server.request("/stall"), deadline: .now() + .milliseconds(200),
                                             streaming: false, maximumBodyBytes: 1 << 20)
            }
            #expect(ContinuousClock.now - started < .seconds(2))
            try await server.waitForClosed(1)
        }
    }

    @Test func oversizedBodiesAreRefused() async throws {
        try await withServer { server, client in
            await #expect(throws: UpstreamTransportError.responseTooLarge) {
                _ = try await client.execute(server.request("/big"), deadline: .now() + .seconds(5), streaming: false,
                                             maximumBodyBytes: 1000)
            }
        }
    }

    @Test func streamsArriveInPartsAndADroppedStreamClosesItsConnection() async throws {
        try await withServer { server, client in
            let full = try await client.execute(server.request("/stream"), deadline: .now() + .seconds(5), streaming: true,
                                                maximumBodyBytes: 1 << 20)
            let stream = try #require(full.stream)
            var parts = 0
            var text = ""
            while let part = try await stream.next() {
                parts += 1
                text += String(buffer: part)
            }
            #expect(text == (0..<20).map { "part \($0)\n" }.joined())
            #expect(parts > 1)

            var abandoned: UpstreamResponse? = try await client.execute(server.request("/stream-forever"),
                                                                         deadline: .now() + .seconds(30), streaming: true,
                                                                         maximumBodyBytes: 1 << 20)
            _ = try await abandoned?.stream?.next()
            abandoned = nil
            try await server.waitForClosed(1)
        }
    }

    @Test func aRefusedConnectionFailsFast() async throws {
        let client = LoopLocalHTTPClient(connectTimeout: .seconds(2), connectionsPerHost: 4)
        // Port 1 on loopback: nothing listens there.
        let request = UpstreamRequest(endpoint: UpstreamEndpoint(baseURL: "http://127.0.0.1:1")!, target: "/",
                                      headers: [:], body: ByteBuffer())
        await #expect(throws: UpstreamTransportError.self) {
            _ = try await client.execute(request, deadline: .now() + .seconds(5), streaming: false, maximumBodyBytes: 100)
        }
        await client.shutdown()
    }

    @Test func connectionsPerHostAreCapped() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = LoopLocalHTTPClient(group: group, connectTimeout: .seconds(2), connectionsPerHost: 2)
        try await withServer(client: client) { server, client in
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for _ in 0..<10 {
                    tasks.addTask {
                        let response = try await client.execute(server.request("/slow"), deadline: .now() + .seconds(10),
                                                                streaming: false, maximumBodyBytes: 1 << 20)
                        #expect(response.status == .ok)
                    }
                }
                try await tasks.waitForAll()
            }
            #expect(server.accepted == 2)
        }
        try await group.shutdownGracefully()
    }

    // MARK: A misbehaving test server

    /// The client runs on one event loop (so on one pool) unless another client is given: connection counts are exact.
    func withServer(client: LoopLocalHTTPClient? = nil,
                    _ body: (TestServer, LoopLocalHTTPClient) async throws -> Void) async throws {
        let server = try await TestServer.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = client ?? LoopLocalHTTPClient(group: group, connectTimeout: .seconds(2), connectionsPerHost: 8)
        do {
            try await body(server, client)
        } catch {
            await client.shutdown()
            try await server.stop()
            try await group.shutdownGracefully()
            throw error
        }
        await client.shutdown()
        try await server.stop()
        try await group.shutdownGracefully()
    }
}

final class TestServer: Sendable {
    let channel: any Channel
    let counts = Locked((accepted: 0, closed: 0))

    init(channel: any Channel) { self.channel = channel }

    var accepted: Int { counts.withLock { $0.accepted } }

    static func start() async throws -> TestServer {
        let box = Locked<TestServer?>(nil)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let server = box.withLock { $0 }!
                server.counts.withLock { $0.accepted += 1 }
                channel.closeFuture.whenComplete { _ in server.counts.withLock { $0.closed += 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Misbehaviour())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let server = TestServer(channel: channel)
        box.withLock { $0 = server }
        return server
    }

    func request(_ path: String) -> UpstreamRequest {
        UpstreamRequest(endpoint: UpstreamEndpoint(baseURL: "http://127.0.0.1:\(channel.localAddress!.port!)")!,
                        target: path, headers: ["content-type": "application/json"], body: ByteBuffer(string: "{}"))
    }

    func waitForClosed(_ count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(5)
        while counts.withLock({ $0.closed }) < count {
            guard ContinuousClock.now < deadline else {
                Issue.record("the server saw \(counts.withLock { $0.closed }) closed connections, expected \(count)")
                return
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    func stop() async throws { try await channel.close() }
}

/// Answers by path: /ok, /close (connection: close), /ok-then-drop (keep-alive, then closes 50 ms later), /stall
/// (never answers), /big (100 kB), /slow (100 ms), /stream (20 parts), /stream-forever (a part every 10 ms).
final class Misbehaviour: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private var path = ""

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): path = head.uri
        case .body: break
        case .end: respond(context: context)
        }
    }

    private func respond(context: ChannelHandlerContext) {
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        func whole(_ text: String, close: Bool = false) {
            var headers: HTTPHeaders = ["content-length": "\(text.utf8.count)"]
            if close { headers.add(name: "connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil)
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            if close { done.whenComplete { _ in bound.value.1.close(promise: nil) } }
        }
        switch path {
        case "/ok": whole("hello")
        case "/close": whole("bye", close: true)
        case "/ok-then-drop":
            whole("hello")
            loop.scheduleTask(in: .milliseconds(50)) { bound.value.1.close(promise: nil) }
        case "/stall": break
        case "/big": whole(String(repeating: "x", count: 100_000))
        case "/slow": loop.scheduleTask(in: .milliseconds(100)) { bound.value.0.slowAnswer(bound.value.1) }
        case "/stream", "/stream-forever":
            let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["content-type": "text/event-stream"])
            context.writeAndFlush(wrapOutboundOut(.head(head)), promise: nil)
            sendPart(0, forever: path == "/stream-forever", context: context)
        default: whole("unknown")
        }
    }

    private func slowAnswer(_ context: ChannelHandlerContext) {
        let headers: HTTPHeaders = ["content-length": "4"]
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "slow")))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    private func sendPart(_ index: Int, forever: Bool, context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        if !forever && index == 20 {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            return
        }
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "part \(index)\n")))), promise: nil)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .milliseconds(forever ? 10 : 2)) {
            bound.value.0.sendPart(index + 1, forever: forever, context: bound.value.1)
        }
    }
}
