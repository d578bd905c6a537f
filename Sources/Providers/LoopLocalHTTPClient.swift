public import NIOCore
import NIOHTTP1
public import NIOPosix
import HTTPEdge
public import SwitchyardCore

/// A lean HTTP/1.1 client for plain-HTTP upstreams (self-hosted replicas, the mock, a static benchmark upstream).
///
/// Each event loop keeps its own keep-alive pool per host, and a call runs on the event loop it is made from, so
/// a gateway request and its upstream call share one thread with no hop between loops and no lock. HTTPS upstreams
/// go through AsyncHTTPClient instead (see `UpstreamTransports`).
///
/// A call writes the whole request, then either collects the whole body (non-streamed answers and every non-200
/// answer) or hands back a `UpstreamBodyStream` that reads the body part by part with backpressure: reading from
/// the socket pauses while 16 parts wait unread. The total deadline is a timer that closes the connection;
/// cancelling the calling task, or dropping an unfinished stream, closes it too. A pooled connection that the
/// server closed while idle is retried once on a fresh one if nothing of the answer had arrived.
public final class LoopLocalHTTPClient: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let pools: [ObjectIdentifier: LoopPool]

    /// - Parameters:
    ///   - connectionsPerHost: The most connections to one host, over all event loops together.
    public init(group: MultiThreadedEventLoopGroup = .singleton, connectTimeout: TimeAmount, connectionsPerHost: Int,
                idleTimeout: TimeAmount = .seconds(60)) {
        self.group = group
        let loops = Array(group.makeIterator())
        let perLoop = max(1, (connectionsPerHost + loops.count - 1) / max(loops.count, 1))
        var pools: [ObjectIdentifier: LoopPool] = [:]
        for loop in loops {
            pools[ObjectIdentifier(loop)] = LoopPool(loop: loop, connectTimeout: connectTimeout, maximumPerHost: perLoop,
                                                    idleTimeout: idleTimeout)
        }
        self.pools = pools
    }

    /// Sends `request` and waits for the answer's head (streamed 200 answers) or its whole body (everything else).
    public func execute(_ request: UpstreamRequest, deadline: NIODeadline, streaming: Bool, maximumBodyBytes: Int)
        async throws -> UpstreamResponse
    {
        let loop = group.any()
        guard let pool = pools[ObjectIdentifier(loop)] else { throw UpstreamTransportError.connectFailed("no event loop") }
        let exchange = Exchange(request: request, pool: pool, streaming: streaming, maximumBodyBytes: maximumBodyBytes)
        return try await exchange.run { pool.start(exchange, deadline: deadline) }
    }

    /// Closes every pooled connection.
    public func shutdown() async {
        for pool in pools.values {
            try? await pool.loop.submit { pool.closeAll() }.get()
        }
    }
}

/// One request to an upstream.
public struct UpstreamRequest: Sendable {
    public var endpoint: UpstreamEndpoint
    public var method: HTTPMethod
    /// Path and query, starting with `/`.
    public var target: String
    public var headers: HTTPHeaders
    public var body: ByteBuffer

    public init(endpoint: UpstreamEndpoint, method: HTTPMethod = .POST, target: String, headers: HTTPHeaders,
                body: ByteBuffer) {
        self.endpoint = endpoint
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
    }
}

/// An upstream's answer: the head, and either the collected body or a stream of body parts.
public struct UpstreamResponse: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    /// The whole body, unless `stream` is set.
    public var body: ByteBuffer
    /// The body, part by part (streamed 200 answers only).
    public var stream: (any UpstreamBodyStream)?

    public init(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer, stream: (any UpstreamBodyStream)? = nil) {
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream
    }
}

/// A response body read part by part; `nil` at its end.
public protocol UpstreamBodyStream: Sendable {
    func next() async throws -> ByteBuffer?
}

public enum UpstreamTransportError: Error, Equatable {
    case connectFailed(String)
    case connectTimeout
    case deadlineExceeded
    /// The connection closed before the answer was complete.
    case connectionClosed
    case responseTooLarge
    case cancelled
    case malformedResponse
}

// MARK: - Per-loop pool

/// The connections of one event loop. Used only on `loop`.
final class LoopPool: @unchecked Sendable {
    let loop: any EventLoop
    let connectTimeout: TimeAmount
    let maximumPerHost: Int
    let idleTimeout: TimeAmount
    let flusher: TickFlusher
    private var hosts: [UpstreamEndpoint: HostConnections] = [:]

    init(loop: any EventLoop, connectTimeout: TimeAmount, maximumPerHost: Int, idleTimeout: TimeAmount) {
        self.loop = loop
        self.connectTimeout = connectTimeout
        self.maximumPerHost = maximumPerHost
        self.idleTimeout = idleTimeout
        self.flusher = TickFlusher(loop: loop)
    }

    final class HostConnections: @unchecked Sendable {
        var idle: [Connection] = []
        var open = 0
        var waiters = CircularBuffer<Exchange>()
    }

    func start(_ exchange: Exchange, deadline: NIODeadline) {
        loop.preconditionInEventLoop()
        exchange.deadline = deadline
        watched.append(exchange)
        if !sweepScheduled { scheduleSweep() }
        acquire(for: exchange)
    }

    // Deadlines: one sweep every `sweepInterval` while exchanges are open, instead of a timer per request (a timer
    // costs an allocation, a promise and a heap insert and removal). A deadline fires up to one interval late.
    static let sweepInterval = TimeAmount.milliseconds(25)
    private var watched: [Exchange] = []
    private var sweepScheduled = false

    private func scheduleSweep() {
        sweepScheduled = true
        loop.scheduleTask(in: Self.sweepInterval) { self.sweep() }
    }

    private func sweep() {
        sweepScheduled = false
        let now = NIODeadline.now()
        var overdue: [Exchange] = []
        watched.removeAll { exchange in
            if exchange.completed { return true }
            if exchange.deadline <= now {
                overdue.append(exchange)
                return true
            }
            return false
        }
        for exchange in overdue { exchange.fail(UpstreamTransportError.deadlineExceeded) }
        if !watched.isEmpty { scheduleSweep() }
    }

    func acquire(for exchange: Exchange) {
        let endpoint = exchange.request.endpoint
        let host = hosts[endpoint] ?? {
            let created = HostConnections()
            hosts[endpoint] = created
            return created
        }()
        let now = NIODeadline.now()
        while let connection = host.idle.popLast() {
            if connection.channel.isActive && now - connection.idleSince < idleTimeout {
                connection.reused = true
                connection.send(exchange)
                return
            }
            connection.channel.close(promise: nil)  // its close callback does the counting
        }
        if host.open < maximumPerHost {
            host.open += 1
            connect(endpoint, host: host, for: exchange)
        } else {
            host.waiters.append(exchange)
        }
    }

    private func connect(_ endpoint: UpstreamEndpoint, host: HostConnections, for exchange: Exchange) {
        let pool = self
        ClientBootstrap(group: loop)
            .connectTimeout(connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // The handler frames requests and parses answers itself (`HTTPResponseParser`). Header values come
                    // from validated configuration and the gateway itself, never from clients.
                    try channel.pipeline.syncOperations.addHandler(ConnectionHandler(flusher: pool.flusher))
                }
            }
            .connect(host: endpoint.host, port: endpoint.port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    let handler = try! channel.pipeline.syncOperations.handler(type: ConnectionHandler.self)
                    let connection = Connection(channel: channel, handler: handler, endpoint: endpoint, pool: pool)
                    handler.connection = connection
                    channel.closeFuture.whenComplete { _ in pool.closed(connection, host: host) }
                    pool.hand(connection, to: exchange)
                case .failure(let error):
                    host.open -= 1
                    if case ChannelError.connectTimeout = error {
                        exchange.fail(UpstreamTransportError.connectTimeout)
                    } else {
                        exchange.fail(UpstreamTransportError.connectFailed("\(error)"))
                    }
                    pool.serveWaiter(host: host, endpoint: endpoint)
                }
            }
    }

    /// Gives a connection to `exchange`, or to a waiter if that one has already ended.
    private func hand(_ connection: Connection, to exchange: Exchange) {
        if exchange.isFinished {
            release(connection)
        } else {
            connection.send(exchange)
        }
    }

    /// A connection whose answer completed with keep-alive.
    func release(_ connection: Connection) {
        guard let host = hosts[connection.endpoint], connection.channel.isActive else { return }
        while let waiter = host.waiters.popFirst() {
            if waiter.isFinished { continue }
            connection.reused = true
            connection.send(waiter)
            return
        }
        connection.idleSince = .now()
        host.idle.append(connection)
    }

    private func closed(_ connection: Connection, host: HostConnections) {
        host.open -= 1
        if let index = host.idle.firstIndex(where: { $0 === connection }) { host.idle.remove(at: index) }
        serveWaiter(host: host, endpoint: connection.endpoint)
    }

    private func serveWaiter(host: HostConnections, endpoint: UpstreamEndpoint) {
        while host.open < maximumPerHost, let waiter = host.waiters.popFirst() {
            if waiter.isFinished { continue }
            host.open += 1
            connect(endpoint, host: host, for: waiter)
        }
    }

    func closeAll() {
        for host in hosts.values {
            for connection in host.idle { connection.channel.close(promise: nil) }
            host.idle.removeAll()
        }
    }
}

/// One pooled connection. Used only on its event loop.
final class Connection: @unchecked Sendable {
    let channel: any Channel
    let handler: ConnectionHandler
    let endpoint: UpstreamEndpoint
    let pool: LoopPool
    var idleSince = NIODeadline.now()
    /// Whether this connection served an earlier request (a failure before any answer may then be retried).
    var reused = false

    init(channel: any Channel, handler: ConnectionHandler, endpoint: UpstreamEndpoint, pool: LoopPool) {
        self.channel = channel
        self.handler = handler
        self.endpoint = endpoint
        self.pool = pool
    }

    func send(_ exchange: Exchange) {
        exchange.connection = self
        exchange.usedReusedConnection = reused
        handler.begin(exchange)
    }
}

/// One request and its answer, from acquiring a connection to the end of the body. Used only on its event loop.
final class Exchange: @unchecked Sendable {
    let request: UpstreamRequest
    let pool: LoopPool
    let streaming: Bool
    let maximumBodyBytes: Int
    /// The caller waiting for the answer's head (streams) or whole body; resumed once, then cleared.
    private var continuation: UnsafeContinuation<UpstreamResponse, any Error>?
    var deadline = NIODeadline.distantFuture
    /// The answer ended (whole, or its stream's last part) or failed: the deadline no longer applies.
    var completed = false
    var connection: Connection?
    var usedReusedConnection = false
    var retried = false
    private(set) var isFinished = false
    private var head: HTTPResponseHead?
    private var collected: ByteBuffer?
    /// Streamed parts not read yet, the reader waiting for one, and whether the body ended or failed.
    private var parts = CircularBuffer<ByteBuffer>()
    private var reader: EventLoopPromise<ByteBuffer?>?
    private var ended = false
    private var failure: (any Error)?

    static let highWater = 16
    static let lowWater = 4

    init(request: UpstreamRequest, pool: LoopPool, streaming: Bool, maximumBodyBytes: Int) {
        self.request = request
        self.pool = pool
        self.streaming = streaming
        self.maximumBodyBytes = maximumBodyBytes
    }

    var wantsMoreData: Bool { parts.count < Self.highWater }
    var receivedHead: Bool { head != nil }

    func received(_ part: HTTPClientResponsePart) {
        guard !isFinished || (streaming && head != nil && !ended && failure == nil) else { return }
        switch part {
        case .head(let responseHead):
            head = responseHead
            if streaming && responseHead.status == .ok {
                // The head goes out now; the body follows through the stream.
                isFinished = true
                resume(.success(UpstreamResponse(status: responseHead.status, headers: responseHead.headers,
                                                 body: ByteBuffer(), stream: LoopLocalBodyStream(self))))
            } else {
                collected = ByteBuffer()
            }
        case .body(let buffer):
            if collected != nil {
                if collected!.readableBytes + buffer.readableBytes > maximumBodyBytes {
                    fail(UpstreamTransportError.responseTooLarge)
                    return
                }
                var incoming = buffer
                collected!.writeBuffer(&incoming)
            } else if let waiting = reader {
                reader = nil
                waiting.succeed(buffer)
            } else {
                parts.append(buffer)
            }
        case .end:
            completed = true
            let keepAlive = head.map(HTTPResponseParser.isKeepAlive) ?? false
            let connection = self.connection
            self.connection = nil
            connection?.handler.exchange = nil
            if let collected, let head {
                isFinished = true
                resume(.success(UpstreamResponse(status: head.status, headers: head.headers, body: collected)))
            } else {
                ended = true
                if let waiting = reader {
                    reader = nil
                    waiting.succeed(nil)
                }
            }
            if let connection {
                if keepAlive { pool.release(connection) } else { connection.channel.close(promise: nil) }
            }
        }
    }

    /// The connection closed or failed under this exchange.
    func connectionLost() {
        connection = nil
        if head == nil && usedReusedConnection && !retried && !isFinished {
            // An idle keep-alive connection the server had already closed: one more try on a fresh connection.
            retried = true
            pool.acquire(for: self)
            return
        }
        fail(UpstreamTransportError.connectionClosed)
    }

    /// Ends the exchange with `error` (deadline, cancellation, a lost connection); closes the connection if the
    /// answer was not complete.
    func fail(_ error: any Error) {
        completed = true
        if let connection {
            self.connection = nil
            connection.handler.exchange = nil
            connection.channel.close(promise: nil)
        }
        if !isFinished {
            isFinished = true
            resume(.failure(error))
        } else if streaming && !ended && failure == nil {
            failure = error
            if let waiting = reader {
                reader = nil
                waiting.fail(error)
            }
        }
    }

    /// The next streamed body part.
    func nextPart() -> EventLoopFuture<ByteBuffer?> {
        let loop = pool.loop
        if !parts.isEmpty {
            let part = parts.removeFirst()
            if parts.count <= Self.lowWater { connection?.handler.resumeReading() }
            return loop.makeSucceededFuture(part)
        }
        if let failure { return loop.makeFailedFuture(failure) }
        if ended { return loop.makeSucceededFuture(nil) }
        let waiting = loop.makePromise(of: ByteBuffer?.self)
        reader = waiting
        connection?.handler.resumeReading()
        return waiting.futureResult
    }

    private func resume(_ result: Result<UpstreamResponse, any Error>) {
        guard let continuation else { return }
        self.continuation = nil
        continuation.resume(with: result)
    }

    /// Runs `start` on this exchange's event loop (directly when already there) and waits for the answer; cancelling
    /// the waiting task ends the exchange. The answer resumes the caller directly: no promise, future or callback
    /// list in between.
    func run(_ start: @escaping @Sendable () -> Void) async throws -> UpstreamResponse {
        let loop = pool.loop
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                if loop.inEventLoop {
                    self.continuation = continuation
                    start()
                } else {
                    loop.execute {
                        self.continuation = continuation
                        start()
                    }
                }
            }
        } onCancel: {
            loop.execute { self.fail(UpstreamTransportError.cancelled) }
        }
    }

    /// Runs `step` on this exchange's event loop (directly when already there) and waits for its result; cancelling
    /// the waiting task ends the exchange.
    func onLoop<T: Sendable>(_ step: @escaping @Sendable () -> EventLoopFuture<T>) async throws -> T {
        let loop = pool.loop
        return try await withTaskCancellationHandler {
            try await (loop.inEventLoop ? step() : loop.flatSubmit(step)).get()
        } onCancel: {
            loop.execute { self.fail(UpstreamTransportError.cancelled) }
        }
    }

    /// The stream's reader went away before the end: drop the connection.
    func abandon() {
        if !ended && failure == nil { fail(UpstreamTransportError.cancelled) }
    }
}

/// Reads a streamed body from its exchange, on the exchange's event loop.
final class LoopLocalBodyStream: UpstreamBodyStream {
    private let exchange: Exchange
    private let loop: any EventLoop

    init(_ exchange: Exchange) {
        self.exchange = exchange
        self.loop = exchange.pool.loop
    }

    func next() async throws -> ByteBuffer? {
        let exchange = self.exchange
        return try await exchange.onLoop { exchange.nextPart() }
    }

    deinit {
        let exchange = self.exchange
        loop.execute { exchange.abandon() }
    }
}

/// The last handler of a pooled connection: writes the current exchange's request, passes the answer's parts to
/// it, and holds reads back while a stream's reader lags.
final class ConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var exchange: Exchange?
    weak var connection: Connection?
    /// Sends requests at the end of the loop's batch, so the upstream is woken once for many.
    let flusher: TickFlusher
    private var context: ChannelHandlerContext?
    private var readPending = false
    private var parser = HTTPResponseParser()
    /// Bytes received and not parsed yet (an incomplete head or chunk-size line).
    private var pending: ByteBuffer?

    init(flusher: TickFlusher) {
        self.flusher = flusher
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func begin(_ exchange: Exchange) {
        guard let context else {
            exchange.connectionLost()
            return
        }
        self.exchange = exchange
        let request = exchange.request
        let framed = HTTPResponseParser.frame(request, allocator: context.channel.allocator)
        context.write(wrapOutboundOut(framed.buffer), promise: nil)
        if !framed.bodyIncluded {
            context.write(wrapOutboundOut(request.body), promise: nil)
        }
        flusher.flushSoon(context.channel)
        resumeReading()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        guard exchange != nil else {
            // An answer nobody asked for: the connection is out of step.
            context.close(promise: nil)
            return
        }
        if var buffered = pending {
            buffered.writeBuffer(&incoming)
            incoming = buffered
            pending = nil
        }
        // Parsed on a copy: delivering a part can close the connection, and `channelInactive` then touches the parser.
        var parser = self.parser
        defer { self.parser = parser }
        do {
            try parser.parse(&incoming) { part in
                // A part after the exchange ended (bytes past the answer) means the connection is out of step.
                guard let exchange = self.exchange else {
                    context.close(promise: nil)
                    return
                }
                exchange.received(part)
            }
        } catch {
            context.close(promise: nil)
            return
        }
        if incoming.readableBytes > 0 { pending = incoming }
    }

    func read(context: ChannelHandlerContext) {
        if let exchange, exchange.receivedHead, !exchange.wantsMoreData {
            readPending = true
        } else {
            context.read()
        }
    }

    func resumeReading() {
        guard readPending, let context else { return }
        readPending = false
        context.read()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A body read until the connection closes ends here.
        parser.finish { part in exchange?.received(part) }
        if let exchange {
            self.exchange = nil
            exchange.connectionLost()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
